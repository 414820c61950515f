package deploy_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/spoolhq/spool/internal/config"
)

// TestComposeFile loads docker-compose.yml as Docker Compose would and
// checks the stack it describes: real Kafka in KRaft mode, PostgreSQL, a
// one-shot migration that the services wait for, a scalable processor,
// Prometheus scraping both, Grafana with the dashboard, and every published
// port bound to loopback.
func TestComposeFile(t *testing.T) {
	opts, err := cli.NewProjectOptions([]string{"../docker-compose.yml"}, cli.WithWorkingDirectory(".."), cli.WithName("spool"))
	require.NoError(t, err)
	p, err := opts.LoadProject(context.Background())
	require.NoError(t, err, "docker-compose.yml must load")

	names := p.ServiceNames()
	slices.Sort(names)
	require.Equal(t, []string{"grafana", "ingress", "kafka", "migrate", "postgres", "processor", "prometheus"}, names)
	svc := func(name string) types.ServiceConfig {
		s, err := p.GetService(name)
		require.NoError(t, err)
		return s
	}

	kafka := svc("kafka")
	require.True(t, strings.HasPrefix(kafka.Image, "apache/kafka:"), kafka.Image)
	require.Equal(t, "broker,controller", *kafka.Environment["KAFKA_PROCESS_ROLES"], "KRaft: no ZooKeeper")
	for _, name := range []string{"kafka", "postgres", "prometheus"} {
		hc := svc(name).HealthCheck
		require.NotNil(t, hc, "%s needs a healthcheck", name)
		require.NotEmpty(t, hc.Test, name)
	}

	depends := func(name string) map[string]string {
		out := map[string]string{}
		for dep, d := range svc(name).DependsOn {
			out[dep] = d.Condition
		}
		return out
	}
	require.Equal(t, map[string]string{"postgres": types.ServiceConditionHealthy}, depends("migrate"))
	require.Equal(t, []string{"/usr/local/bin/spoolctl", "migrate"}, []string(svc("migrate").Entrypoint))
	for _, name := range []string{"ingress", "processor"} {
		s := svc(name)
		require.Equal(t, types.ServiceConditionHealthy, depends(name)["kafka"], name)
		require.Equal(t, types.ServiceConditionCompletedSuccessfully, depends(name)["migrate"], name)
		require.Equal(t, "/usr/local/bin/"+name, s.Entrypoint[0])
		require.Equal(t, "kafka:9092", *s.Environment["SPOOL_KAFKA_BROKERS"])
		require.Contains(t, *s.Environment["SPOOL_DATABASE_URL"], "@postgres:5432/")
		require.NotNil(t, s.Build, "%s is built from the Dockerfile", name)
	}
	// The stack runs with auth off, plaintext Kafka and anonymous Grafana:
	// nothing of it may be published beyond this machine.
	published := 0
	for _, s := range p.Services {
		for _, port := range s.Ports {
			published++
			require.Equal(t, "127.0.0.1", port.HostIP, "%s publishes %s:%d on every interface", s.Name, port.Published, port.Target)
		}
	}
	require.Equal(t, 4, published, "ingress, Kafka, Prometheus and Grafana")
	require.Equal(t, "8080", svc("ingress").Ports[0].Published)
	require.Equal(t, uint32(8080), svc("ingress").Ports[0].Target)
	processor := svc("processor")
	require.Empty(t, processor.Ports, "a published port would stop --scale processor=N")
	require.Empty(t, processor.ContainerName, "a container name would stop --scale processor=N")

	// Every file the stack mounts exists, and Prometheus scrapes both.
	for _, s := range p.Services {
		for _, v := range s.Volumes {
			if v.Type == types.VolumeTypeBind {
				_, err := os.Stat(v.Source)
				require.NoError(t, err, "%s mounts %s", s.Name, v.Source)
			}
		}
	}
	prom, err := os.ReadFile("prometheus/prometheus.yml")
	require.NoError(t, err)
	require.Contains(t, string(prom), "ingress:8080")
	require.Contains(t, string(prom), `names: ["processor"]`)
	require.FileExists(t, "grafana/dashboards/spool.json")
}

// TestHelmValuesAreConfigKeys: every key under config: in the chart's
// values.yaml is one spool knows, since spool refuses unknown keys at
// start-up.
func TestHelmValuesAreConfigKeys(t *testing.T) {
	raw, err := os.ReadFile("helm/spool/values.yaml")
	require.NoError(t, err)
	var values struct {
		Config map[string]any `yaml:"config"`
	}
	require.NoError(t, yaml.Unmarshal(raw, &values))
	known := map[string]bool{"auth.keys": true, "entities": true}
	for _, k := range config.Keys {
		known[k.Name] = true
	}
	var walk func(prefix string, m map[string]any)
	n := 0
	walk = func(prefix string, m map[string]any) {
		for k, v := range m {
			name := prefix + k
			if sub, ok := v.(map[string]any); ok && !known[name] {
				walk(name+".", sub)
				continue
			}
			n++
			require.True(t, known[name], "values.yaml config.%s is not a spool config key (docs/configuration.md)", name)
		}
	}
	walk("", values.Config)
	require.Greater(t, n, 10)
}

// TestDockerfileBuildsTheBinaries: the image holds every server binary and
// runs as non-root.
func TestDockerfileBuildsTheBinaries(t *testing.T) {
	raw, err := os.ReadFile("../Dockerfile")
	require.NoError(t, err)
	df := string(raw)
	for _, bin := range []string{"ingress", "processor", "spoolctl"} {
		require.Contains(t, df, "./cmd/"+bin, "the image must hold %s", bin)
		_, err := os.Stat(filepath.Join("..", "cmd", bin))
		require.NoError(t, err)
	}
	require.Contains(t, df, "USER nonroot")
	require.Contains(t, df, "CGO_ENABLED=0")
}

// TestToolchainsAgreeWithGoMod: the Go that go.mod requires is the one the
// README tells a new machine to have and the one the image builds with, so
// that neither drifts when go.mod moves.
func TestToolchainsAgreeWithGoMod(t *testing.T) {
	mod, err := os.ReadFile("../go.mod")
	require.NoError(t, err)
	var version string
	for line := range strings.Lines(string(mod)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "go "); ok {
			version = v
		}
	}
	require.NotEmpty(t, version, "go.mod has no go line")
	readme, err := os.ReadFile("../README.md")
	require.NoError(t, err)
	require.Contains(t, string(readme), "Go "+version+" or newer", "the README's prerequisites")
	dockerfile, err := os.ReadFile("../Dockerfile")
	require.NoError(t, err)
	require.Contains(t, string(dockerfile), "FROM golang:"+version+" ", "the Dockerfile's build image")
}
