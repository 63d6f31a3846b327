package mesh

import (
	"slices"
	"time"
)

// nodeParser parses the node list like ParseNodes but remembers each
// node's parse keyed by the fields ParseNode reads, so a pass re-parses
// only the Nodes whose inputs changed. The key is the content, not the
// resourceVersion: a status heartbeat bumps the version without touching
// what a peer is made of, and sources without versions (fakes, files) stay
// correct. It also tells the incremental path what changed since the last
// pass.
type nodeParser struct {
	entries map[string]*parsedNode
	gen     uint64
}

type parsedNode struct {
	in   parseInput
	node Node // valid if err is nil
	err  error
	seen uint64
}

// parseInput is everything of a RawNode that ParseNode reads besides the
// name.
type parseInput struct {
	created                             time.Time
	key, ep, epOverride, ka             string
	hasKey, hasEp, hasEpOverride, hasKA bool
	podCIDRs                            []string
	// location is LocationOf (what ParseNode reads of the labels and the
	// location annotation); privEP the private endpoint annotation.
	location, privEP string
	hasPrivEP        bool
	relay            string
}

func inputOf(raw *RawNode) parseInput {
	in := parseInput{created: raw.Created, podCIDRs: raw.PodCIDRs}
	in.key, in.hasKey = raw.Annotations[AnnotationPublicKey]
	in.ep, in.hasEp = raw.Annotations[AnnotationEndpoint]
	in.epOverride, in.hasEpOverride = raw.Annotations[AnnotationEndpointOverride]
	in.ka, in.hasKA = raw.Annotations[AnnotationKeepalive]
	in.location = LocationOf(*raw)
	in.privEP, in.hasPrivEP = raw.Annotations[AnnotationPrivateEndpoint]
	in.relay = raw.Annotations[AnnotationRelay]
	return in
}

func (a *parseInput) equal(b *parseInput) bool {
	return a.created.Equal(b.created) && a.key == b.key && a.ep == b.ep && a.epOverride == b.epOverride &&
		a.ka == b.ka && a.hasKey == b.hasKey && a.hasEp == b.hasEp && a.hasEpOverride == b.hasEpOverride &&
		a.hasKA == b.hasKA && slices.Equal(a.podCIDRs, b.podCIDRs) &&
		a.location == b.location && a.privEP == b.privEP && a.hasPrivEP == b.hasPrivEP && a.relay == b.relay
}

// nodeChange is a peer Node whose parse inputs changed since the last pass.
// Old and New are nil where the node did not parse.
type nodeChange struct {
	Name     string
	Old, New *Node
}

// listDelta is what changed in the list since the previous parse.
type listDelta struct {
	// Structural is set when Nodes appeared, disappeared or repeated a
	// name: only a full Compute knows what that does to conflicts.
	Structural bool
	Changed    []nodeChange
}

// parse returns what ParseNodes(raws, self) returns, and the delta against
// the previous call.
func (c *nodeParser) parse(raws []RawNode, self string) (NodeList, listDelta) {
	if c.entries == nil {
		c.entries = make(map[string]*parsedNode, len(raws))
	}
	c.gen++
	var delta listDelta
	l := NodeList{SelfName: self, Nodes: make([]Node, 0, len(raws))}
	for i := range raws {
		raw := &raws[i]
		if raw.Name == self {
			if l.Own == nil {
				l.Own = parseOwn(*raw)
			}
			continue
		}
		in := inputOf(raw)
		e, ok := c.entries[raw.Name]
		switch {
		case !ok:
			delta.Structural = true
			e = &parsedNode{in: in}
			e.node, e.err = ParseNode(*raw)
			c.entries[raw.Name] = e
		case e.seen == c.gen:
			// A second Node of the same name: parse it apart from the
			// cache, which keeps the first.
			delta.Structural = true
			n, err := ParseNode(*raw)
			appendParsed(&l, raw.Name, n, err)
			continue
		case !e.in.equal(&in):
			ch := nodeChange{Name: raw.Name}
			if e.err == nil {
				old := e.node
				ch.Old = &old
			}
			e.in = in
			e.node, e.err = ParseNode(*raw)
			if e.err == nil {
				n := e.node
				ch.New = &n
			}
			delta.Changed = append(delta.Changed, ch)
		}
		e.seen = c.gen
		appendParsed(&l, raw.Name, e.node, e.err)
	}
	for name, e := range c.entries {
		if e.seen != c.gen {
			delete(c.entries, name)
			delta.Structural = true
		}
	}
	return l, delta
}

func appendParsed(l *NodeList, name string, n Node, err error) {
	if err != nil {
		l.Invalid = append(l.Invalid, exclusion(name, err))
		return
	}
	l.Nodes = append(l.Nodes, n)
}

// reset forgets every parse (the next pass is structural).
func (c *nodeParser) reset() { c.entries = nil }
