package kafka

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestSASLFirstMessages: the mechanisms the embedded broker does not speak
// (OAUTHBEARER, AWS_MSK_IAM) open with what their servers check, carrying
// the configured secrets where those servers look for them: the bearer
// token as RFC 7628 frames it; the access key, session token and a
// signature that AWS's Signature Version 4 over the secret key verifies
// (recomputed here from the specification). PLAIN, for reference, as RFC
// 4616 frames it.
func TestSASLFirstMessages(t *testing.T) {
	first := func(s SASL, host string) []byte {
		t.Helper()
		m, err := s.mechanism()
		require.NoError(t, err)
		require.Equal(t, s.Mechanism, m.Name())
		_, msg, err := m.Authenticate(context.Background(), host)
		require.NoError(t, err)
		return msg
	}
	require.Equal(t, "\x00spool\x00pw", string(first(SASL{Mechanism: MechanismPlain, Username: "spool", Password: "pw"}, "b:9092")))
	require.Equal(t, "n,,\x01auth=Bearer eyJ.token\x01\x01", string(first(SASL{Mechanism: MechanismOAuthBearer, Token: "eyJ.token"}, "b:9092")))

	host := "b-1.cluster.kafka.eu-west-1.amazonaws.com"
	var got map[string]string
	require.NoError(t, json.Unmarshal(first(SASL{Mechanism: MechanismAWSMSKIAM, Username: "AKIDEXAMPLE", Password: "secret-key",
		Token: "session-token"}, host+":9098"), &got))
	require.Equal(t, "2020_10_22", got["version"])
	require.Equal(t, host, got["host"])
	require.Equal(t, "kafka-cluster:Connect", got["action"])
	require.Equal(t, "session-token", got["x-amz-security-token"])
	date := got["x-amz-date"][:8]
	scope := date + "/eu-west-1/kafka-cluster/aws4_request"
	require.Equal(t, "AKIDEXAMPLE/"+scope, got["x-amz-credential"])

	q := url.Values{}
	for name, key := range map[string]string{"Action": "action", "X-Amz-Algorithm": "x-amz-algorithm", "X-Amz-Credential": "x-amz-credential",
		"X-Amz-Date": "x-amz-date", "X-Amz-Expires": "x-amz-expires", "X-Amz-SignedHeaders": "x-amz-signedheaders",
		"X-Amz-Security-Token": "x-amz-security-token"} {
		q.Set(name, got[key])
	}
	empty := sha256.Sum256(nil)
	canonical := "GET\n/\n" + strings.ReplaceAll(q.Encode(), "+", "%20") + "\nhost:" + host + "\n\nhost\n" + hex.EncodeToString(empty[:])
	hashed := sha256.Sum256([]byte(canonical))
	toSign := "AWS4-HMAC-SHA256\n" + got["x-amz-date"] + "\n" + scope + "\n" + hex.EncodeToString(hashed[:])
	mac := func(key []byte, s string) []byte {
		h := hmac.New(sha256.New, key)
		h.Write([]byte(s))
		return h.Sum(nil)
	}
	key := mac(mac(mac(mac([]byte("AWS4secret-key"), date), "eu-west-1"), "kafka-cluster"), "aws4_request")
	require.Equal(t, hex.EncodeToString(mac(key, toSign)), got["x-amz-signature"], "signed with the configured secret key")
}
