package auth

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// SignatureHeader carries "sha256=<hex HMAC-SHA256 of the body>" when a secret is set.
const SignatureHeader = "X-Revenprox-Signature"

// Transport sizing. A reconnect storm sends one webhook call per distinct uncached token at
// once; keeping up to maxConnsPerHost connections idle means the storm reuses them instead of
// paying a TCP (and TLS) handshake per call, while the cap stops one node from opening
// thousands of sockets to the webhook (excess calls queue and are bounded by auth.timeout).
const (
	maxConnsPerHost = 512
	idleConnTimeout = 90 * time.Second
)

// webhookRequest is the JSON body of design §5. Token is the only secret in it.
type webhookRequest struct {
	Token      string            `json:"token"`
	RemoteAddr string            `json:"remote_addr"`
	Headers    map[string]string `json:"headers"`
	Node       string            `json:"node"`
}

// webhookFailure is a failed call: it counts against the breaker and is never cached. Its text
// is a short reason safe to log and to return (no token, no URL, no query).
type webhookFailure struct{ reason string }

func (f *webhookFailure) Error() string { return f.reason }

func failure(format string, args ...any) error {
	return &webhookFailure{reason: fmt.Sprintf(format, args...)}
}

// errClosed aborts calls in flight when the Authenticator closes; the breaker ignores it.
var errClosed = errors.New("authenticator closed")

// webhookClient calls the customer's webhook.
type webhookClient struct {
	url       string
	secret    []byte
	timeout   time.Duration
	headers   []string // canonical names of forwarded headers
	node      string
	transport *http.Transport
	client    *http.Client
	tracer    trace.Tracer
}

func newWebhookClient(rawURL, secret string, timeout time.Duration, headers []string, node string) (*webhookClient, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		// Never echo the URL: its query may carry a key.
		return nil, errors.New("auth: auth.webhook_url must be an http or https URL")
	}
	dialer := &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          maxConnsPerHost,
		MaxIdleConnsPerHost:   maxConnsPerHost,
		MaxConnsPerHost:       maxConnsPerHost,
		IdleConnTimeout:       idleConnTimeout,
		TLSHandshakeTimeout:   timeout,
		ExpectContinueTimeout: time.Second,
	}
	canon := make([]string, 0, len(headers))
	for _, h := range headers {
		if h = strings.TrimSpace(h); h != "" {
			canon = append(canon, http.CanonicalHeaderKey(h))
		}
	}
	return &webhookClient{
		url:       rawURL,
		secret:    []byte(secret),
		timeout:   timeout,
		headers:   canon,
		node:      node,
		transport: tr,
		client: &http.Client{
			Transport: tr,
			// A redirect could carry the token to another host; the webhook answers itself.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		tracer: otel.Tracer("github.com/revenprox/revenprox/auth"),
	}, nil
}

// sign returns the signature header value for body.
func sign(secret, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// forwardHeaders picks the configured headers (all values joined with ", ").
func (w *webhookClient) forwardHeaders(h http.Header) map[string]string {
	out := make(map[string]string, len(w.headers))
	for _, name := range w.headers {
		if v := h.Values(name); len(v) > 0 {
			out[name] = strings.Join(v, ", ")
		}
	}
	return out
}

// call makes one webhook call. It returns the answer for 200 (allow or deny), 401 and 403; any
// other outcome is a *webhookFailure, or errClosed when ctx was cancelled by Close. Errors never
// contain the token, the body or the URL.
func (w *webhookClient) call(ctx context.Context, req Request, observe func(time.Duration)) (webhookAnswer, error) {
	ctx, span := w.tracer.Start(ctx, "auth.webhook", trace.WithSpanKind(trace.SpanKindClient))
	defer span.End()
	ans, status, err := w.do(ctx, req, observe)
	if status != 0 {
		span.SetAttributes(attribute.Int("http.response.status_code", status))
	}
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
	} else {
		span.SetAttributes(attribute.Bool("auth.allow", ans.Allow))
	}
	return ans, err
}

func (w *webhookClient) do(ctx context.Context, req Request, observe func(time.Duration)) (webhookAnswer, int, error) {
	body, err := json.Marshal(webhookRequest{
		Token:      req.Token,
		RemoteAddr: req.RemoteAddr,
		Headers:    w.forwardHeaders(req.Headers),
		Node:       w.node,
	})
	if err != nil {
		return webhookAnswer{}, 0, failure("encoding request: %v", err)
	}
	ctx, cancel := context.WithTimeout(ctx, w.timeout)
	defer cancel()
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url, bytes.NewReader(body))
	if err != nil {
		return webhookAnswer{}, 0, failure("building request")
	}
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Accept", "application/json")
	hreq.Header.Set("User-Agent", "revenprox-auth/1")
	if len(w.secret) > 0 {
		hreq.Header.Set(SignatureHeader, sign(w.secret, body))
	}
	otel.GetTextMapPropagator().Inject(ctx, propagation.HeaderCarrier(hreq.Header))

	start := time.Now()
	resp, err := w.client.Do(hreq)
	if err != nil {
		observe(time.Since(start))
		return webhookAnswer{}, 0, classifyTransportError(ctx, err)
	}
	defer resp.Body.Close()
	// Read the whole body (bounded) so the keep-alive connection goes back to the pool.
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	observe(time.Since(start))
	if err != nil {
		return webhookAnswer{}, resp.StatusCode, classifyTransportError(ctx, err)
	}
	switch code := resp.StatusCode; {
	case code == http.StatusOK:
		if len(data) > maxResponseBytes {
			return webhookAnswer{}, code, failure("invalid response: body over %d bytes", maxResponseBytes)
		}
		ans, err := decodeDecision(data)
		if err != nil {
			return webhookAnswer{}, code, failure("%v", err)
		}
		return ans, code, nil
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		return webhookAnswer{Allow: false, Reason: "webhook status " + strconv.Itoa(code)}, code, nil
	case code == http.StatusTooManyRequests:
		return webhookAnswer{}, code, failure("status 429 (rate limited)")
	case code >= 500:
		return webhookAnswer{}, code, failure("status %d", code)
	default:
		// 3xx (redirects are not followed), 400, 404, ...: a misconfiguration, not an answer
		// about this token. Treating it as a deny would tell clients never to retry.
		return webhookAnswer{}, code, failure("unexpected status %d", code)
	}
}

// classifyTransportError turns a client error into a short reason. *url.Error embeds the URL,
// so only its cause is kept.
func classifyTransportError(ctx context.Context, err error) error {
	if errors.Is(ctx.Err(), context.Canceled) {
		return errClosed
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return failure("timeout")
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return failure("timeout")
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	var oe *net.OpError
	if errors.As(err, &oe) {
		return failure("connection error: %s: %v", oe.Op, oe.Err)
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return failure("connection error: closed by the webhook")
	}
	return failure("connection error: %v", err)
}

// close drops idle keep-alive connections (and their goroutines).
func (w *webhookClient) close() { w.transport.CloseIdleConnections() }
