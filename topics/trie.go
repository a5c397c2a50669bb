package topics

// node is one level of a wildcard trie. A pattern's tokens are a path from the root: literal
// tokens through lits, `*` through star; a pattern ending in `>` hangs its entry on gt of the
// node before it, any other pattern on entry of its last node. Each pattern has exactly one
// place in the trie, and a topic reaches each node at most once, so a walk visits each
// matching pattern exactly once. Nodes are guarded by the lock of the wildShard holding them.
type node[S comparable] struct {
	lits  map[string]*node[S]
	star  *node[S]
	entry *entry[S] // pattern ending at this node
	gt    *entry[S] // pattern "<path to this node>.>"
}

func (n *node[S]) empty() bool {
	return len(n.lits) == 0 && n.star == nil && n.entry == nil && n.gt == nil
}

// match visits the entries under n matching topic, a non-empty rest of a literal topic.
func (n *node[S]) match(topic string, visit func(pattern string, subs []S)) {
	if n.gt != nil { // `>` takes one or more tokens; topic has at least one
		visit(n.gt.pattern, n.gt.subs)
	}
	tok, rest, more := cut(topic)
	if c := n.lits[tok]; c != nil {
		c.matchRest(rest, more, visit)
	}
	if n.star != nil {
		n.star.matchRest(rest, more, visit)
	}
}

func (n *node[S]) matchRest(rest string, more bool, visit func(pattern string, subs []S)) {
	if more {
		n.match(rest, visit)
	} else if n.entry != nil {
		visit(n.entry.pattern, n.entry.subs)
	}
}

// insert places e at pattern's position, creating nodes on the way.
func (n *node[S]) insert(pattern string, e *entry[S]) {
	for {
		tok, rest, more := cut(pattern)
		if tok == ">" && !more {
			n.gt = e
			return
		}
		n = n.child(tok)
		if !more {
			n.entry = e
			return
		}
		pattern = rest
	}
}

func (n *node[S]) child(tok string) *node[S] {
	if tok == "*" {
		if n.star == nil {
			n.star = &node[S]{}
		}
		return n.star
	}
	c := n.lits[tok]
	if c == nil {
		if n.lits == nil {
			n.lits = make(map[string]*node[S])
		}
		c = &node[S]{}
		n.lits[tok] = c
	}
	return c
}

// delete removes pattern's entry and prunes the nodes left empty, so the trie's size follows
// the live patterns, not every pattern ever subscribed.
func (n *node[S]) delete(pattern string) {
	// Valid patterns have at most MaxTopicTokens tokens; longer (invalid) ones still work,
	// only their path is not pruned past the fixed-size record.
	var path [MaxTopicTokens + 1]*node[S]
	var toks [MaxTopicTokens + 1]string
	depth, truncated := 0, false
	for {
		tok, rest, more := cut(pattern)
		if tok == ">" && !more {
			n.gt = nil
			break
		}
		var c *node[S]
		if tok == "*" {
			c = n.star
		} else {
			c = n.lits[tok]
		}
		if c == nil {
			return // not present
		}
		if depth < len(path) {
			path[depth], toks[depth] = n, tok
			depth++
		} else {
			truncated = true
		}
		n = c
		if !more {
			n.entry = nil
			break
		}
		pattern = rest
	}
	if truncated {
		return
	}
	for depth > 0 && n.empty() {
		depth--
		parent, tok := path[depth], toks[depth]
		if tok == "*" {
			parent.star = nil
		} else {
			delete(parent.lits, tok)
		}
		n = parent
	}
}
