// Package secretscan finds private keys in text the tests collect (logs,
// state files, metrics, API objects), in every encoding a 32-byte key could
// leak in.
package secretscan

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Forms are the encodings of k searched for: base64 (wg's form), unpadded
// and URL-safe base64, hex in both cases (the UAPI's form) and the JSON
// array a [32]byte becomes in a JSON log line.
func Forms(k wgtypes.Key) []string {
	arr, _ := json.Marshal([32]byte(k))
	return []string{
		k.String(),
		base64.RawStdEncoding.EncodeToString(k[:]),
		base64.URLEncoding.EncodeToString(k[:]),
		hex.EncodeToString(k[:]),
		strings.ToUpper(hex.EncodeToString(k[:])),
		string(arr),
	}
}

// Find returns the index of the first of keys that appears in text in any
// form, and that form; -1 if none does.
func Find(text string, keys []wgtypes.Key) (int, string) {
	for i, k := range keys {
		for _, f := range Forms(k) {
			if strings.Contains(text, f) {
				return i, f
			}
		}
	}
	return -1, ""
}
