package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Duration is a time.Duration read from YAML and env as "1s", "250ms", "5m".
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) String() string { return time.Duration(d).String() }

// MarshalYAML writes the duration as a string.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// UnmarshalYAML reads "1s"-style strings.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: %q is not a duration such as 1s or 250ms", n.Line, n.Value)}} // collected with yaml's other errors, line included
	}
	*d = Duration(v)
	return nil
}

// EnvPrefix starts every environment variable read by Load.
const EnvPrefix = "REVENPROX_"

// Load builds a configuration: defaults, then the YAML file at path (if non-empty), then
// REVENPROX_* environment variables from environ. Flags are applied by the caller with Set.
// The result is not validated; call Validate.
func Load(path string, environ []string) (Config, error) {
	c := Default()
	if path != "" {
		raw, err := os.ReadFile(path)
		if err != nil {
			return c, fmt.Errorf("config: read %s: %w", path, err)
		}
		if err := decodeYAML(raw, &c); err != nil {
			return c, fmt.Errorf("%w: %s: %w", ErrInvalid, path, err)
		}
	}
	for _, kv := range environ {
		name, value, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(name, EnvPrefix) {
			continue
		}
		key, known := envKeys()[name]
		if !known {
			return c, fmt.Errorf("%w: %s: unknown environment variable (no such key)", ErrInvalid, name)
		}
		if err := c.Set(key, value); err != nil {
			return c, fmt.Errorf("%s: %w", name, err)
		}
	}
	return c, nil
}

func decodeYAML(raw []byte, c *Config) error {
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

// Keys lists every dotted key (e.g. "limits.max_connections") in declaration order.
func Keys() []string {
	var keys []string
	walk(reflect.ValueOf(&Config{}).Elem(), "", func(key string, _ reflect.Value) { keys = append(keys, key) })
	return keys
}

// envKeys maps REVENPROX_LIMITS_MAX_CONNECTIONS to limits.max_connections.
func envKeys() map[string]string {
	m := make(map[string]string)
	for _, k := range Keys() {
		m[EnvPrefix+strings.ToUpper(strings.ReplaceAll(k, ".", "_"))] = k
	}
	return m
}

func walk(v reflect.Value, prefix string, fn func(key string, field reflect.Value)) {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		key := prefix + name
		fv := v.Field(i)
		if fv.Kind() == reflect.Struct && fv.Type() != reflect.TypeFor[Duration]() {
			walk(fv, key+".", fn)
			continue
		}
		fn(key, fv)
	}
}

// Set assigns one dotted key from its string form, as env variables and flags give it. Lists
// are comma-separated. The error names the key and the value.
func (c *Config) Set(key, value string) error {
	var target reflect.Value
	walk(reflect.ValueOf(c).Elem(), "", func(k string, f reflect.Value) {
		if k == key {
			target = f
		}
	})
	if !target.IsValid() {
		return fmt.Errorf("%w: %s: unknown key", ErrInvalid, key)
	}
	bad := func(why string) error { return invalid(key, fmt.Sprintf("%q", value), why) }
	switch target.Interface().(type) {
	case Duration:
		d, err := time.ParseDuration(value)
		if err != nil {
			return bad("not a duration such as 1s or 250ms")
		}
		target.Set(reflect.ValueOf(Duration(d)))
	case string:
		target.SetString(value)
	case bool:
		b, err := strconv.ParseBool(value)
		if err != nil {
			return bad("not a boolean")
		}
		target.SetBool(b)
	case int:
		n, err := strconv.Atoi(value)
		if err != nil {
			return bad("not an integer")
		}
		target.SetInt(int64(n))
	case float64:
		f, err := strconv.ParseFloat(value, 64)
		if err != nil {
			return bad("not a number")
		}
		target.SetFloat(f)
	case []string:
		var list []string
		for _, s := range strings.Split(value, ",") {
			if s = strings.TrimSpace(s); s != "" {
				list = append(list, s)
			}
		}
		target.Set(reflect.ValueOf(list))
	default:
		return bad("unsupported type")
	}
	return nil
}

// Redacted returns a copy with secrets replaced, for logging and check-config output.
func (c Config) Redacted() Config {
	hide := func(s *string) {
		if *s != "" {
			*s = "REDACTED"
		}
	}
	hide(&c.Auth.WebhookSecret)
	hide(&c.Admin.APIKey)
	hide(&c.Cluster.RoutePassword)
	c.Auth.WebhookURL = redactURLs(c.Auth.WebhookURL)
	c.Cluster.NATSURL = redactURLs(c.Cluster.NATSURL)
	return c
}

// redactURLs hides user info and query strings (which may carry keys) in a comma-separated
// list of URLs.
func redactURLs(list string) string {
	if list == "" {
		return list
	}
	parts := strings.Split(list, ",")
	for i, p := range parts {
		u, err := url.Parse(strings.TrimSpace(p))
		if err != nil {
			parts[i] = "REDACTED"
			continue
		}
		if u.User != nil {
			u.User = url.User("REDACTED")
		}
		if u.RawQuery != "" {
			u.RawQuery = "REDACTED"
		}
		parts[i] = u.String()
	}
	return strings.Join(parts, ",")
}
