package kafka

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/aws"
	"github.com/twmb/franz-go/pkg/sasl/oauth"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// Cluster is how every client of spool reaches the brokers: their
// addresses and, where the cluster requires them, TLS and SASL.
type Cluster struct {
	Brokers []string
	// ClientID is the client.id sent with every request (empty: franz-go's
	// "kgo"): what brokers log requests and apply quotas by.
	ClientID string
	// TLS, when set, encrypts every connection (and, with a client
	// certificate in it, authenticates by it).
	TLS *tls.Config
	// SASL authenticates each connection; the zero value, not at all.
	SASL SASL
}

// Plaintext is a cluster reached without TLS or SASL.
func Plaintext(brokers ...string) Cluster { return Cluster{Brokers: brokers} }

// SASL mechanisms spool speaks, by the names Kafka gives them.
const (
	MechanismPlain       = "PLAIN"
	MechanismSCRAMSHA256 = "SCRAM-SHA-256"
	MechanismSCRAMSHA512 = "SCRAM-SHA-512"
	MechanismOAuthBearer = "OAUTHBEARER"
	MechanismAWSMSKIAM   = "AWS_MSK_IAM"
)

// SASL is the credentials of one mechanism. PLAIN and SCRAM take Username
// and Password; OAUTHBEARER a Token; AWS_MSK_IAM an access key (Username),
// a secret key (Password) and, for temporary credentials, a session token
// (Token).
type SASL struct {
	Mechanism string
	Username  string
	Password  string
	Token     string
}

// mechanism is franz-go's implementation of s, nil for none.
func (s SASL) mechanism() (sasl.Mechanism, error) {
	switch s.Mechanism {
	case "":
		return nil, nil
	case MechanismPlain:
		return plain.Auth{User: s.Username, Pass: s.Password}.AsMechanism(), nil
	case MechanismSCRAMSHA256:
		return scram.Auth{User: s.Username, Pass: s.Password}.AsSha256Mechanism(), nil
	case MechanismSCRAMSHA512:
		return scram.Auth{User: s.Username, Pass: s.Password}.AsSha512Mechanism(), nil
	case MechanismOAuthBearer:
		return oauth.Auth{Token: s.Token}.AsMechanism(), nil
	case MechanismAWSMSKIAM:
		return aws.Auth{AccessKey: s.Username, SecretKey: s.Password, SessionToken: s.Token}.AsManagedStreamingIAMMechanism(), nil
	default:
		return nil, fmt.Errorf("SASL mechanism %q is not one spool speaks", s.Mechanism)
	}
}

// dialTimeout bounds one connection attempt, TLS handshake included.
const dialTimeout = 10 * time.Second

// opts are the client options that reach the cluster.
func (c Cluster) opts() ([]kgo.Opt, error) {
	opts := []kgo.Opt{kgo.SeedBrokers(c.Brokers...)}
	if c.ClientID != "" {
		opts = append(opts, kgo.ClientID(c.ClientID))
	}
	if c.TLS != nil {
		opts = append(opts, kgo.DialTLSConfig(c.TLS.Clone()), kgo.DialTimeout(dialTimeout))
	}
	m, err := c.SASL.mechanism()
	if err != nil {
		return nil, err
	}
	if m != nil {
		opts = append(opts, kgo.SASL(m))
	}
	return opts, nil
}

// newClient is a franz-go client of the cluster with more options.
func (c Cluster) newClient(more ...kgo.Opt) (*kgo.Client, error) {
	opts, err := c.opts()
	if err != nil {
		return nil, err
	}
	return kgo.NewClient(append(opts, more...)...)
}

// String names the brokers and how they are reached, never a secret.
func (c Cluster) String() string {
	s := strings.Join(c.Brokers, ",")
	if c.TLS != nil {
		s += " (TLS)"
	}
	if c.SASL.Mechanism != "" {
		s += " (SASL " + c.SASL.Mechanism + " as " + c.SASL.Username + ")"
	}
	return s
}

// accessError explains an error that retrying cannot mend because the
// cluster refuses spool as configured: a broker certificate spool does not
// trust, TLS spoken to a plaintext listener, SASL credentials or a
// mechanism the brokers refuse, or an ACL. It names the settings to look
// at; nil for any other error.
func accessError(err error) error {
	var verify *tls.CertificateVerificationError
	var unknownCA x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var header tls.RecordHeaderError
	switch {
	case errors.As(err, &verify), errors.As(err, &unknownCA), errors.As(err, &hostname):
		return fmt.Errorf("the brokers' TLS certificate is not trusted (check kafka.tls.ca_file and kafka.tls.server_name): %w", err)
	case errors.As(err, &header):
		return fmt.Errorf("the broker did not answer TLS (is this a plaintext listener? check kafka.tls.enabled): %w", err)
	case errors.Is(err, kerr.SaslAuthenticationFailed):
		return fmt.Errorf("the brokers refused the SASL credentials (check kafka.sasl.username and kafka.sasl.password): %w", err)
	case errors.Is(err, kerr.UnsupportedSaslMechanism), errors.Is(err, kerr.IllegalSaslState):
		return fmt.Errorf("the brokers refused the SASL mechanism (check kafka.sasl.mechanism): %w", err)
	case errors.Is(err, kerr.TopicAuthorizationFailed), errors.Is(err, kerr.GroupAuthorizationFailed),
		errors.Is(err, kerr.ClusterAuthorizationFailed):
		return fmt.Errorf("the brokers' ACLs refuse spool's principal: %w", err)
	}
	return nil
}

// explainClosed explains err, a connection the brokers closed, when they
// answer a client reached otherwise: some brokers (the embedded one among
// them) close the connection on wrong credentials or a mechanism they do
// not take, rather than answering SASL_AUTHENTICATION_FAILED, and a TLS
// listener closes one that speaks plaintext. A closed connection alone
// would read as a broker away, and be waited for. nil when the brokers
// answer no other way either.
func (c Cluster) explainClosed(ctx context.Context, err error) error {
	if !errors.Is(err, io.EOF) {
		return nil
	}
	if c.TLS == nil && c.speaksTLS(ctx) {
		return fmt.Errorf("the brokers speak TLS and spool does not (set kafka.tls.enabled, and kafka.tls.ca_file for a private CA): %w", err)
	}
	if c.SASL.Mechanism != "" {
		// Apache Kafka closes a connection that sends a request before
		// authenticating, so this tells only brokers that answer one (the
		// embedded broker): elsewhere the error stays as it was.
		bare := c
		bare.SASL = SASL{}
		if bare.answers(ctx) {
			return fmt.Errorf("the brokers refused the SASL credentials or mechanism: they closed the connection during %s "+
				"authentication as %q and answer without it (check kafka.sasl.mechanism, username and password): %w",
				c.SASL.Mechanism, c.SASL.Username, err)
		}
	}
	return nil
}

// speaksTLS reports whether the first broker completes a TLS handshake: a
// bare handshake, no Kafka request and no credentials sent, whatever the
// certificate (only the protocol is asked about).
func (c Cluster) speaksTLS(ctx context.Context) bool {
	if len(c.Brokers) == 0 {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	d := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true}} //nolint:gosec // nothing is sent: only the handshake is tried
	conn, err := d.DialContext(ctx, "tcp", c.Brokers[0])
	if err != nil {
		return false
	}
	_ = conn.Close()
	return true
}

// answers reports whether a broker answers an ApiVersions request, which
// needs no authentication, within dialTimeout.
func (c Cluster) answers(ctx context.Context) bool {
	cl, err := c.newClient(kgo.RetryTimeout(dialTimeout))
	if err != nil {
		return false
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	_, err = cl.Request(ctx, kmsg.NewPtrApiVersionsRequest())
	return err == nil
}
