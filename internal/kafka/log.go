package kafka

import (
	"errors"
	"log/slog"
	"net"
	"syscall"

	"github.com/twmb/franz-go/pkg/kgo"
)

// slogLogger passes franz-go's warnings and errors to slog; its info and
// debug chatter stays out, so that logs are quiet when healthy.
type slogLogger struct{ l *slog.Logger }

func (s slogLogger) Level() kgo.LogLevel {
	if s.l == nil {
		return kgo.LogLevelNone
	}
	return kgo.LogLevelWarn
}

func (s slogLogger) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	switch level {
	case kgo.LogLevelError:
		s.l.Error("kafka: "+msg, keyvals...)
	case kgo.LogLevelWarn:
		s.l.Warn("kafka: "+msg, keyvals...)
	}
}

func isNetErr(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, net.ErrClosed)
}
