package kafka

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// The group protocols a Consumer speaks (kafka.group_protocol).
const (
	// ProtocolConsumer is KIP-848's: the group coordinator assigns
	// partitions and each member reconciles on its own heartbeats, so a
	// member joining, leaving or dying never stops the others' fetching.
	ProtocolConsumer = "consumer"
	// ProtocolClassic is the JoinGroup/SyncGroup protocol with the
	// cooperative-sticky balancer: every rebalance waits for every member
	// to rejoin.
	ProtocolClassic = "classic"
)

// configureGroup prepares a KIP-848 group. It checks that the brokers
// speak KIP-848 (franz-go falls back to the classic protocol when they do
// not), and sets the group's session timeout and heartbeat interval, which
// under KIP-848 are the group's configs (consumer.session.timeout.ms,
// consumer.heartbeat.interval.ms) rather than each member's. A refusal
// (a broker minimum above the timeout, no ALTER_CONFIGS permission) is
// logged: the brokers' defaults then apply. It reports whether the configs
// are worth keeping set (keepGroupConfigured): the group speaks KIP-848,
// and the brokers took them or failed for a passing reason.
func (c *Consumer) configureGroup(ctx context.Context) bool {
	log := c.cfg.Logger.With("group", c.cfg.Group)
	versions, err := kmsg.NewPtrApiVersionsRequest().RequestWith(ctx, c.cl)
	if err == nil {
		err = kerr.ErrorForCode(versions.ErrorCode)
	}
	if err != nil {
		log.Warn("asking the brokers which group protocols they speak", "error", err)
		return false
	}
	heartbeat := slices.IndexFunc(versions.ApiKeys, func(k kmsg.ApiVersionsResponseApiKey) bool {
		return k.ApiKey == int16(kmsg.ConsumerGroupHeartbeat) && k.MaxVersion >= 1
	})
	if heartbeat < 0 {
		log.Info("the brokers do not speak KIP-848 (Kafka 4.0+); the group uses the classic protocol")
		return false
	}
	if err := c.setGroupConfigs(ctx); err != nil {
		// Tried again by keepGroupConfigured, unless refused for good.
		log.Warn("setting the group's session timeout; until it is set, a crashed processor's partitions move after the brokers' group.consumer.session.timeout.ms",
			"session_timeout", c.cfg.SessionTimeout, "error", err)
		return !refusedForGood(err)
	}
	log.Info("group protocol: consumer (KIP-848)", "session_timeout", c.cfg.SessionTimeout, "heartbeat", heartbeatInterval)
	return true
}

// refusedForGood reports whether the brokers will not take the group's
// configs however often they are asked: no permission, a policy, a value
// out of their bounds.
func refusedForGood(err error) bool {
	return errors.Is(err, kerr.ClusterAuthorizationFailed) || errors.Is(err, kerr.GroupAuthorizationFailed) ||
		errors.Is(err, kerr.PolicyViolation) || errors.Is(err, kerr.InvalidConfig) || errors.Is(err, kerr.InvalidRequest)
}

// groupConfigsEvery is how often a KIP-848 group's configs are checked.
// A broker should keep them, and Kafka does; the embedded broker forgets
// them when it is killed, and with them the session timeout: a processor
// that crashed after that held its partitions for Kafka's default 45 s
// (docs/reliability.md). Checked, they cost a read every few seconds, and
// are set again only when they are gone (a write would add a record to
// Kafka's metadata log each time).
const groupConfigsEvery = 5 * time.Second

// keepGroupConfigured sets the group's configs again, every
// groupConfigsEvery until ctx ends, when the brokers no longer have them.
func (c *Consumer) keepGroupConfigured(ctx context.Context) {
	t := time.NewTicker(groupConfigsEvery)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		held, err := c.groupConfigsHeld(ctx)
		if err == nil && !held {
			err = c.setGroupConfigs(ctx)
		}
		if err != nil && !failing && ctx.Err() == nil {
			c.cfg.Logger.Warn("setting the group's session timeout again", "group", c.cfg.Group, "error", err)
		}
		failing = err != nil
	}
}

// groupConfigsHeld reports whether the brokers hold the group's session
// timeout as spool set it.
func (c *Consumer) groupConfigsHeld(ctx context.Context) (bool, error) {
	req := kmsg.NewPtrDescribeConfigsRequest()
	res := kmsg.NewDescribeConfigsRequestResource()
	res.ResourceType = kmsg.ConfigResourceTypeGroupConfig
	res.ResourceName = c.cfg.Group
	res.ConfigNames = []string{"consumer.session.timeout.ms"}
	req.Resources = append(req.Resources, res)
	resp, err := req.RequestWith(ctx, c.cl)
	if err != nil {
		return false, err
	}
	want := strconv.FormatInt(c.cfg.SessionTimeout.Milliseconds(), 10)
	for _, r := range resp.Resources {
		if err := kerr.ErrorForCode(r.ErrorCode); err != nil {
			return false, err
		}
		for _, cfg := range r.Configs {
			if cfg.Name == "consumer.session.timeout.ms" && cfg.Value != nil && *cfg.Value == want {
				return true, nil
			}
		}
	}
	return false, nil
}

// setGroupConfigs sets the group's session timeout and heartbeat interval.
func (c *Consumer) setGroupConfigs(ctx context.Context) error {
	req := kmsg.NewPtrIncrementalAlterConfigsRequest()
	res := kmsg.NewIncrementalAlterConfigsRequestResource()
	res.ResourceType = kmsg.ConfigResourceTypeGroupConfig
	res.ResourceName = c.cfg.Group
	for name, value := range map[string]int64{
		"consumer.session.timeout.ms":    c.cfg.SessionTimeout.Milliseconds(),
		"consumer.heartbeat.interval.ms": heartbeatInterval.Milliseconds(),
	} {
		cfg := kmsg.NewIncrementalAlterConfigsRequestResourceConfig()
		cfg.Name, cfg.Op = name, kmsg.IncrementalAlterConfigOpSet
		v := strconv.FormatInt(value, 10)
		cfg.Value = &v
		res.Configs = append(res.Configs, cfg)
	}
	req.Resources = append(req.Resources, res)
	resp, err := req.RequestWith(ctx, c.cl)
	if err == nil && len(resp.Resources) > 0 {
		err = kerr.ErrorForCode(resp.Resources[0].ErrorCode)
		if err != nil && resp.Resources[0].ErrorMessage != nil {
			err = fmt.Errorf("%w: %s", err, *resp.Resources[0].ErrorMessage)
		}
	}
	return err
}
