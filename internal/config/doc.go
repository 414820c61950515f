// Package config is the one configuration model of every spool binary and
// the only importer of viper. A value comes from, in rising precedence: the
// key's default, the config file (--config, SPOOL_CONFIG, else ./spool.yaml
// when present), SPOOL_* environment variables (key with "." → "_", upper
// case) and command-line flags. Every key has a default, so that viper
// honours its environment variable, and Load validates the result once,
// naming the offending key.
package config
