package topics

import (
	"errors"
	"fmt"
	"strings"
)

// Limits of a topic name (design §4).
const (
	MaxTopicBytes  = 255
	MaxTopicTokens = 16
)

// Sentinel errors; every validation error wraps ErrInvalidTopic.
var (
	ErrInvalidTopic = errors.New("topics: invalid topic")
)

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidTopic}, args...)...)
}

// ValidateTopic checks a literal topic (what a publish names): dot-separated tokens of
// [A-Za-z0-9_-], at most MaxTopicTokens tokens and MaxTopicBytes bytes, no wildcards.
func ValidateTopic(topic string) error {
	return validate(topic, false)
}

// ValidatePattern checks a subscription pattern: a topic whose tokens may also be `*` (exactly
// one token) or, in the last position only, `>` (one or more trailing tokens).
func ValidatePattern(pattern string) error {
	return validate(pattern, true)
}

func validate(s string, wildcards bool) error {
	if s == "" {
		return invalidf("empty")
	}
	if len(s) > MaxTopicBytes {
		return invalidf("longer than %d bytes", MaxTopicBytes)
	}
	tokens := 1
	start := 0
	for i := 0; i <= len(s); i++ {
		if i < len(s) && s[i] != '.' {
			c := s[i]
			if !validByte(c) && c != '*' && c != '>' {
				return invalidf("byte %q at %d is not allowed (tokens are [A-Za-z0-9_-])", c, i)
			}
			continue
		}
		tok := s[start:i]
		switch {
		case tok == "":
			return invalidf("empty token at %d", start)
		case tok == "*" || tok == ">":
			if !wildcards {
				return invalidf("wildcard %q not allowed in a literal topic", tok)
			}
			if tok == ">" && i != len(s) {
				return invalidf("'>' must be the last token")
			}
		case strings.ContainsAny(tok, "*>"):
			return invalidf("wildcard inside token %q", tok)
		}
		if i < len(s) {
			tokens++
			if tokens > MaxTopicTokens {
				return invalidf("more than %d tokens", MaxTopicTokens)
			}
		}
		start = i + 1
	}
	return nil
}

func validByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// IsWildcard reports whether a valid pattern contains `*` or `>` tokens.
func IsWildcard(pattern string) bool {
	return strings.IndexByte(pattern, '*') >= 0 || strings.IndexByte(pattern, '>') >= 0
}

// Match reports whether a valid literal topic matches a valid pattern. It allocates nothing.
func Match(pattern, topic string) bool {
	for {
		pt, prest, pmore := cut(pattern)
		tt, trest, tmore := cut(topic)
		switch {
		case pt == ">":
			return true // '>' needs one or more tokens; topic has at least tt here
		case pt != "*" && pt != tt:
			return false
		}
		if !pmore || !tmore {
			return pmore == tmore
		}
		pattern, topic = prest, trest
	}
}

// Covers reports whether every topic matched by pattern sub is also matched by pattern
// allowed: the ACL check for "may this connection subscribe to sub?". Both must be valid.
func Covers(allowed, sub string) bool {
	for {
		at, arest, amore := cut(allowed)
		st, srest, smore := cut(sub)
		switch {
		case at == ">":
			return true
		case st == ">":
			return false // sub reaches arbitrary depth, allowed does not
		case at == "*":
			// any single token of sub, literal or '*', is covered
		case at != st:
			return false
		}
		if !amore || !smore {
			return amore == smore
		}
		allowed, sub = arest, srest
	}
}

// cut splits the first token off s; more reports whether a '.' followed.
func cut(s string) (token, rest string, more bool) {
	if i := strings.IndexByte(s, '.'); i >= 0 {
		return s[:i], s[i+1:], true
	}
	return s, "", false
}
