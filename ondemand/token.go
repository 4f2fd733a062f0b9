package ondemand

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"
	"time"
)

// ErrInvalidToken is returned by AuthenticateRunner for a token that is
// malformed, forged or expired. Its messages never contain the token.
var ErrInvalidToken = errors.New("invalid runner token")

// RunnerClaims is what a valid runner token asserts.
type RunnerClaims struct {
	// RunnerID is the only runner ID the token may be used for.
	RunnerID string `json:"rid"`
	// TaskID is set for an on-demand runner's token.
	TaskID string `json:"tid,omitempty"`
	// OnDemand restricts the runner to the jobs held for its ID.
	OnDemand bool `json:"od,omitempty"`
	// Labels are the labels a static runner may present.
	Labels map[string]string `json:"lbl,omitempty"`
	// Expires is when the token stops being accepted.
	Expires time.Time `json:"exp"`
}

const tokenPrefix = "odrkit1."

// tokenSigner signs and verifies runner tokens with HMAC-SHA256. A token is
// "odrkit1." + base64url(JSON claims) + "." + base64url(MAC over both
// preceding parts).
type tokenSigner struct {
	key []byte
	now func() time.Time
}

func newTokenSigner(key []byte, now func() time.Time) (*tokenSigner, error) {
	if key == nil {
		key = make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return nil, fmt.Errorf("generate token key: %w", err)
		}
	}
	return &tokenSigner{key: key, now: now}, nil
}

func (s *tokenSigner) sign(c RunnerClaims) (string, error) {
	body, err := json.Marshal(c)
	if err != nil {
		return "", fmt.Errorf("encode token claims: %w", err)
	}
	payload := tokenPrefix + base64.RawURLEncoding.EncodeToString(body)
	return payload + "." + base64.RawURLEncoding.EncodeToString(s.mac(payload)), nil
}

func (s *tokenSigner) mac(payload string) []byte {
	h := hmac.New(sha256.New, s.key)
	h.Write([]byte(payload))
	return h.Sum(nil)
}

func (s *tokenSigner) verify(token string) (RunnerClaims, error) {
	var c RunnerClaims
	if !strings.HasPrefix(token, tokenPrefix) {
		return c, fmt.Errorf("%w: not an odrkit runner token", ErrInvalidToken)
	}
	dot := strings.LastIndexByte(token, '.')
	if dot <= len(tokenPrefix) {
		return c, fmt.Errorf("%w: malformed", ErrInvalidToken)
	}
	payload, sig := token[:dot], token[dot+1:]
	got, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil || !hmac.Equal(got, s.mac(payload)) {
		return c, fmt.Errorf("%w: bad signature", ErrInvalidToken)
	}
	body, err := base64.RawURLEncoding.DecodeString(payload[len(tokenPrefix):])
	if err != nil {
		return c, fmt.Errorf("%w: malformed claims", ErrInvalidToken)
	}
	if err := json.Unmarshal(body, &c); err != nil {
		return c, fmt.Errorf("%w: malformed claims", ErrInvalidToken)
	}
	if c.RunnerID == "" {
		return c, fmt.Errorf("%w: no runner ID", ErrInvalidToken)
	}
	if !s.now().Before(c.Expires) {
		return c, fmt.Errorf("%w: expired at %s", ErrInvalidToken, c.Expires.UTC().Format(time.RFC3339))
	}
	c.Labels = maps.Clone(c.Labels)
	return c, nil
}
