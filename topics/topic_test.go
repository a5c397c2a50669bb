package topics

import (
	"errors"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// tokens returns n dot-separated copies of tok.
func tokens(tok string, n int) string {
	return strings.TrimSuffix(strings.Repeat(tok+".", n), ".")
}

func TestValidate(t *testing.T) {
	// 255 bytes in 16 tokens: 15 tokens of 15 bytes + 1 token of 15 bytes + 15 dots = 255.
	max255 := tokens(strings.Repeat("a", 15), 16)
	if len(max255) != MaxTopicBytes {
		t.Fatalf("fixture is %d bytes", len(max255))
	}
	cases := []struct {
		name         string
		s            string
		topicOK      bool // ValidateTopic
		patternOK    bool // ValidatePattern
		wantWildcard bool // IsWildcard (checked for valid patterns only)
	}{
		{"single token", "chat", true, true, false},
		{"two tokens", "chat.lobby", true, true, false},
		{"all allowed bytes", "AZaz09_-.x", true, true, false},
		{"16 tokens", tokens("a", 16), true, true, false},
		{"17 tokens", tokens("a", 17), false, false, false},
		{"17 wildcard tokens", tokens("*", 17), false, false, false},
		{"16 tokens ending in >", tokens("a", 15) + ".>", false, true, true},
		{"255 bytes", max255, true, true, false},
		{"256 bytes", max255 + "b", false, false, false},
		{"256 bytes one token", strings.Repeat("a", 256), false, false, false},
		{"empty", "", false, false, false},
		{"leading dot", ".a", false, false, false},
		{"trailing dot", "a.", false, false, false},
		{"double dot", "a..b", false, false, false},
		{"only a dot", ".", false, false, false},
		{"space", "a b", false, false, false},
		{"slash", "a/b", false, false, false},
		{"colon", "a:b", false, false, false},
		{"non-ASCII", "caf\u00e9", false, false, false},
		{"NUL", "a\x00b", false, false, false},
		{"tab", "a\tb", false, false, false},
		{"star alone", "*", false, true, true},
		{"star first", "*.b", false, true, true},
		{"star middle", "a.*.c", false, true, true},
		{"star last", "a.*", false, true, true},
		{"two stars", "*.*", false, true, true},
		{"gt alone", ">", false, true, true},
		{"gt last", "a.>", false, true, true},
		{"star then gt", "a.*.>", false, true, true},
		{"gt first of two", ">.a", false, false, false},
		{"gt middle", "a.>.b", false, false, false},
		{"two gt", "a.>.>", false, false, false},
		{"star inside token", "a*", false, false, false},
		{"star inside token middle", "a.b*c.d", false, false, false},
		{"gt inside token", "a.b>", false, false, false},
		{"double star token", "a.**", false, false, false},
		{"star gt token", "a.*>", false, false, false},
		{"wildcard with empty token", "a..*", false, false, false},
		{"gt after trailing dot", "a.>.", false, false, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateTopic(tc.s)
			if (err == nil) != tc.topicOK {
				t.Errorf("ValidateTopic(%q) = %v, want ok=%v", tc.s, err, tc.topicOK)
			}
			if err != nil && !errors.Is(err, ErrInvalidTopic) {
				t.Errorf("ValidateTopic(%q) error %v does not wrap ErrInvalidTopic", tc.s, err)
			}
			err = ValidatePattern(tc.s)
			if (err == nil) != tc.patternOK {
				t.Errorf("ValidatePattern(%q) = %v, want ok=%v", tc.s, err, tc.patternOK)
			}
			if err != nil && !errors.Is(err, ErrInvalidTopic) {
				t.Errorf("ValidatePattern(%q) error %v does not wrap ErrInvalidTopic", tc.s, err)
			}
			if tc.patternOK && IsWildcard(tc.s) != tc.wantWildcard {
				t.Errorf("IsWildcard(%q) = %v, want %v", tc.s, !tc.wantWildcard, tc.wantWildcard)
			}
		})
	}
}

func TestMatch(t *testing.T) {
	cases := []struct {
		pattern, topic string
		want           bool
	}{
		{"a", "a", true},
		{"a", "b", false},
		{"a", "ab", false},
		{"ab", "a", false},
		{"a.b", "a.b", true},
		{"a.b", "a.c", false},
		{"a.b", "a", false},
		{"a", "a.b", false},
		{"a.b", "a.b.c", false},
		// `*` is exactly one token.
		{"*", "a", true},
		{"*", "a.b", false},
		{"a.*", "a.b", true},
		{"a.*", "a", false},
		{"a.*", "a.b.c", false},
		{"*.b", "a.b", true},
		{"*.b", "a.c", false},
		{"a.*.c", "a.b.c", true},
		{"a.*.c", "a.b.d", false},
		{"a.*.c", "a.c", false},
		{"*.*", "a.b", true},
		{"*.*", "a", false},
		{"*.*", "a.b.c", false},
		// `>` is one or more trailing tokens.
		{">", "a", true},
		{">", "a.b.c", true},
		{"a.>", "a.b", true},
		{"a.>", "a.b.c.d", true},
		{"a.>", "a", false}, // needs at least one token after a
		{"a.>", "b.c", false},
		{"a.b.>", "a.b", false},
		{"a.b.>", "a.c.d", false},
		{"*.>", "a", false},
		{"*.>", "a.b", true},
		{"a.*.>", "a.b.c", true},
		{"a.*.>", "a.b", false},
		// Tokens compare whole, never by prefix.
		{"chat.lobby", "chat.lobbyist", false},
		{"chat.*", "chatroom.x", false},
		{"chat.>", "chatroom.x", false},
		{tokens("*", 16), tokens("x", 16), true},
		{tokens("*", 15), tokens("x", 16), false},
		{tokens("x", 15) + ".>", tokens("x", 16), true},
	}
	for _, tc := range cases {
		if err := ValidatePattern(tc.pattern); err != nil {
			t.Fatalf("fixture pattern %q invalid: %v", tc.pattern, err)
		}
		if err := ValidateTopic(tc.topic); err != nil {
			t.Fatalf("fixture topic %q invalid: %v", tc.topic, err)
		}
		if got := Match(tc.pattern, tc.topic); got != tc.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tc.pattern, tc.topic, got, tc.want)
		}
		if got := refMatch(tc.pattern, tc.topic); got != tc.want {
			t.Errorf("refMatch(%q, %q) = %v, want %v (reference is wrong)", tc.pattern, tc.topic, got, tc.want)
		}
		// A literal topic used as a pattern is covered exactly when it is matched.
		if got := Covers(tc.pattern, tc.topic); got != tc.want {
			t.Errorf("Covers(%q, %q) = %v, want %v (same as Match)", tc.pattern, tc.topic, got, tc.want)
		}
	}
}

func TestMatchAllocatesNothing(t *testing.T) {
	allocs := testing.AllocsPerRun(100, func() {
		Match("a.*.c.>", "a.b.c.d.e")
		Covers("a.>", "a.*.c")
	})
	if allocs != 0 {
		t.Fatalf("Match/Covers allocate %v times per call", allocs)
	}
}

func TestCovers(t *testing.T) {
	cases := []struct {
		allowed, sub string
		want         bool
	}{
		{"a", "a", true},
		{"a", "b", false},
		{"a.b", "a.b", true},
		{"a", "a.b", false},
		{"a.b", "a", false},
		{"*", "a", true},
		{"*", "*", true},
		{"a", "*", false}, // `*` reaches topics other than a
		{"*", ">", false}, // `>` reaches deeper topics
		{"*", "a.b", false},
		{"a.*", "a.b", true},
		{"a.*", "a.*", true},
		{"a.*", "*.b", false},
		{"a.*", "a.>", false},
		{"a.*.c", "a.*.c", true},
		{"a.*.c", "a.b.c", true},
		{"a.b.c", "a.*.c", false},
		{">", "a", true},
		{">", ">", true},
		{">", "*.*.>", true},
		{"a.>", "a.b", true},
		{"a.>", "a.*", true},
		{"a.>", "a.>", true},
		{"a.>", "a.b.>", true},
		{"a.>", "a.*.>", true},
		{"a.>", "a", false},
		{"a.>", ">", false},
		{"a.>", "*.b", false},
		{"a.b.>", "a.>", false},
		{"*.>", "a.>", true},
		{"*.>", ">", false}, // `>` matches single-token topics, `*.>` does not
		{"*.>", "*", false},
		{"*.*", "a.>", false},
		{"a.*.>", "a.b.c", true},
		{"a.*.>", "a.b", false},
	}
	for _, tc := range cases {
		for _, p := range []string{tc.allowed, tc.sub} {
			if err := ValidatePattern(p); err != nil {
				t.Fatalf("fixture %q invalid: %v", p, err)
			}
		}
		if got := Covers(tc.allowed, tc.sub); got != tc.want {
			t.Errorf("Covers(%q, %q) = %v, want %v", tc.allowed, tc.sub, got, tc.want)
		}
		if !Covers(tc.allowed, tc.allowed) || !Covers(tc.sub, tc.sub) {
			t.Errorf("Covers is not reflexive on %q / %q", tc.allowed, tc.sub)
		}
	}
}

// TestCoversAgainstTopics checks Covers by its definition over a small universe: allowed
// covers sub exactly when every topic matched by sub is matched by allowed. Depth 4 of
// patterns against topics of up to 5 tokens is enough for `>` to show its difference.
func TestCoversAgainstTopics(t *testing.T) {
	var pats, topicsUniverse []string
	var gen func(prefix string, depth int, wild bool, out *[]string)
	gen = func(prefix string, depth int, wild bool, out *[]string) {
		toks := []string{"a", "b"}
		if wild {
			toks = append(toks, "*", ">")
		}
		for _, tok := range toks {
			s := tok
			if prefix != "" {
				s = prefix + "." + tok
			}
			*out = append(*out, s)
			if tok != ">" && depth > 1 {
				gen(s, depth-1, wild, out)
			}
		}
	}
	gen("", 3, true, &pats)
	gen("", 5, false, &topicsUniverse)
	for _, allowed := range pats {
		for _, sub := range pats {
			want := true
			for _, topic := range topicsUniverse {
				if Match(sub, topic) && !Match(allowed, topic) {
					want = false
					break
				}
			}
			// Topics deeper than the universe are only reachable through `>` in sub, and
			// any such sub is already caught by a 4- or 5-token topic above.
			if got := Covers(allowed, sub); got != want {
				t.Errorf("Covers(%q, %q) = %v, by definition %v", allowed, sub, got, want)
			}
		}
	}
}

// refMatch is an independent, allocating reference implementation of Match.
func refMatch(pattern, topic string) bool {
	p := strings.Split(pattern, ".")
	tt := strings.Split(topic, ".")
	for i, tok := range p {
		if tok == ">" {
			return i == len(p)-1 && len(tt) > i
		}
		if i >= len(tt) || (tok != "*" && tok != tt[i]) {
			return false
		}
	}
	return len(p) == len(tt)
}

// literalize turns a valid pattern into a topic it matches by replacing each wildcard token
// with a literal token of the same length.
func literalize(pattern string) string {
	return strings.NewReplacer("*", "x", ">", "y").Replace(pattern)
}

func FuzzValidatePattern(f *testing.F) {
	for _, s := range []string{
		"a", "a.b", "*", ">", "a.*", "a.>", "*.*.>", "a.>.b", "a..b", ".a", "a.", "", "a*",
		"chat.lobby", tokens("a", 16), tokens("a", 17), strings.Repeat("a", 256), "caf\u00e9", "a b",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		perr := ValidatePattern(s)
		terr := ValidateTopic(s)
		if terr == nil && perr != nil {
			t.Fatalf("%q is a valid topic but not a valid pattern: %v", s, perr)
		}
		if perr != nil {
			return
		}
		if terr == nil && IsWildcard(s) {
			t.Fatalf("valid topic %q reported as wildcard", s)
		}
		lit := literalize(s)
		if err := ValidateTopic(lit); err != nil {
			t.Fatalf("literalized %q -> %q invalid: %v", s, lit, err)
		}
		if !Match(s, lit) {
			t.Fatalf("Match(%q, %q) = false", s, lit)
		}
		if !Covers(s, s) {
			t.Fatalf("Covers(%q, %q) = false", s, s)
		}
		if !Covers(s, lit) {
			t.Fatalf("Covers(%q, %q) = false", s, lit)
		}
	})
}

func FuzzMatch(f *testing.F) {
	seeds := [][2]string{
		{"a", "a"}, {"a.*", "a.b"}, {"a.>", "a"}, {"a.>", "a.b.c"}, {">", "x"}, {"*.b", "a.b"},
		{"a.*.c", "a.b"}, {"chat.lobby", "chat.lobbyist"}, {"a.b", "a..b"}, {"", ""}, {"*", ""},
	}
	for _, s := range seeds {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, topic string) {
		got := Match(pattern, topic) // must not panic, whatever the input
		if ValidatePattern(pattern) != nil || ValidateTopic(topic) != nil {
			return
		}
		if want := refMatch(pattern, topic); got != want {
			t.Fatalf("Match(%q, %q) = %v, reference says %v", pattern, topic, got, want)
		}
		if c := Covers(pattern, topic); c != got {
			t.Fatalf("Covers(%q, %q) = %v, Match = %v", pattern, topic, c, got)
		}
	})
}
