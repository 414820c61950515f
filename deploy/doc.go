// Package deploy holds no code: its tests check the deployment files that
// cannot run here (no Docker engine, no cluster). docker-compose.yml is
// loaded and validated with compose-spec/compose-go, the Helm chart's
// values are held to spool's config keys, and the Dockerfile to the
// binaries. scripts/helm-check lints and renders the chart itself.
package deploy
