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

// RunnerClaims are the facts a valid runner token asserts.
type RunnerClaims struct {
	// RunnerID is the only runner ID the token may be used for.
	RunnerID string `json:"rid"`
	// TaskID is set for an on-demand runner's token.
	TaskID string `json:"tid,omitempty"`
	// OnDemand restricts the runner to the jobs held for its ID.
	OnDemand bool `json:"od,omitempty"`
	// Labels are the labels a static runner may present.
	Labels map[string]string `json:"lbl,omitempty"`
	// IssuedAt is when the token was signed; revocations apply to tokens
	// issued at or before them.
	IssuedAt time.Time `json:"iat"`
	// Expires is when the token stops being accepted.
	Expires time.Time `json:"exp"`
}

const tokenPrefix = "odrkit1."

// ErrTokenRevoked is wrapped by AuthenticateRunner errors for a token issued
// before its runner's tokens were revoked. It also wraps ErrInvalidToken.
var ErrTokenRevoked = fmt.Errorf("%w: revoked", ErrInvalidToken)

// tokenSigner signs runner tokens with one key and verifies them with that
// key or any of the older ones, so that keys can be rotated without
// invalidating tokens already handed out. A token is
// "odrkit1.<key ID>.<base64url JSON claims>.<base64url HMAC-SHA256>", the
// MAC covering everything before it. The key ID names the key that signed.
type tokenSigner struct {
	signID string
	keys   map[string][]byte
	now    func() time.Time
}

func newTokenSigner(key []byte, verifyKeys [][]byte, now func() time.Time) (*tokenSigner, error) {
	if key == nil {
		key = make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return nil, fmt.Errorf("generate token key: %w", err)
		}
	}
	s := &tokenSigner{signID: keyID(key), keys: map[string][]byte{keyID(key): key}, now: now}
	for _, k := range verifyKeys {
		s.keys[keyID(k)] = k
	}
	return s, nil
}

// keyID is a short public name of a key: its SHA-256, truncated.
func keyID(key []byte) string {
	sum := sha256.Sum256(key)
	return base64.RawURLEncoding.EncodeToString(sum[:6])
}

func (s *tokenSigner) sign(c RunnerClaims) (string, error) {
	if c.IssuedAt.IsZero() {
		c.IssuedAt = s.now()
	}
	body, err := json.Marshal(c)
	if err != nil {
		return "", fmt.Errorf("encode token claims: %w", err)
	}
	payload := tokenPrefix + s.signID + "." + base64.RawURLEncoding.EncodeToString(body)
	return payload + "." + base64.RawURLEncoding.EncodeToString(mac(s.keys[s.signID], payload)), nil
}

func mac(key []byte, payload string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(payload))
	return h.Sum(nil)
}

func (s *tokenSigner) verify(token string) (RunnerClaims, error) {
	var c RunnerClaims
	rest, ok := strings.CutPrefix(token, tokenPrefix)
	if !ok {
		return c, fmt.Errorf("%w: not an odrkit runner token", ErrInvalidToken)
	}
	parts := strings.Split(rest, ".")
	if len(parts) != 3 {
		return c, fmt.Errorf("%w: malformed", ErrInvalidToken)
	}
	key, ok := s.keys[parts[0]]
	if !ok {
		return c, fmt.Errorf("%w: signed with an unknown key; the host's keys may have been rotated past it", ErrInvalidToken)
	}
	// Strict decoding: a token whose last character differs only in
	// unused bits must not verify.
	got, err := base64.RawURLEncoding.Strict().DecodeString(parts[2])
	payload := token[:len(token)-len(parts[2])-1]
	if err != nil || !hmac.Equal(got, mac(key, payload)) {
		return c, fmt.Errorf("%w: bad signature", ErrInvalidToken)
	}
	body, err := base64.RawURLEncoding.Strict().DecodeString(parts[1])
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
