package show

import (
	"fmt"
	"strings"
	"time"
)

// PrettyDuration spells a duration the way `wg show` does: whole seconds,
// largest unit first, zero parts left out ("1 minute, 3 seconds"). Under a
// second it is "0 seconds" (wg would print nothing).
func PrettyDuration(d time.Duration) string {
	left := int64(d / time.Second)
	if left < 0 {
		left = -left
	}
	units := []struct {
		name string
		secs int64
	}{
		{"year", 365 * 24 * 60 * 60},
		{"day", 24 * 60 * 60},
		{"hour", 60 * 60},
		{"minute", 60},
		{"second", 1},
	}
	var parts []string
	for _, u := range units {
		n := left / u.secs
		left %= u.secs
		if n == 0 {
			continue
		}
		s := ""
		if n != 1 {
			s = "s"
		}
		parts = append(parts, fmt.Sprintf("%d %s%s", n, u.name, s))
	}
	if len(parts) == 0 {
		return "0 seconds"
	}
	return strings.Join(parts, ", ")
}

// Ago spells how long before now t was, like `wg show`'s latest handshake:
// "Now" for the same second, "1 minute, 3 seconds ago", and wg's warning
// when t is in the future.
func Ago(t, now time.Time) string {
	secs := now.Unix() - t.Unix()
	switch {
	case secs == 0:
		return "Now"
	case secs < 0:
		return "(System clock wound backward; connection problems may ensue.)"
	}
	return PrettyDuration(time.Duration(secs)*time.Second) + " ago"
}

// Bytes spells a byte count with wg's units: "512 B", "1.50 KiB",
// "1.20 MiB", "3.00 GiB", "1.00 TiB" (two decimals from KiB up).
func Bytes(b int64) string {
	const k = 1024
	switch {
	case b < k:
		return fmt.Sprintf("%d B", b)
	case b < k*k:
		return fmt.Sprintf("%.2f KiB", float64(b)/k)
	case b < k*k*k:
		return fmt.Sprintf("%.2f MiB", float64(b)/(k*k))
	case b < k*k*k*k:
		return fmt.Sprintf("%.2f GiB", float64(b)/(k*k*k))
	}
	return fmt.Sprintf("%.2f TiB", float64(b)/(k*k*k*k))
}

// Transfer is wg's transfer line: "1.20 MiB received, 3.40 MiB sent".
func Transfer(rx, tx int64) string {
	return Bytes(rx) + " received, " + Bytes(tx) + " sent"
}
