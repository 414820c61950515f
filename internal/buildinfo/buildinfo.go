package buildinfo

import (
	"runtime"
	"runtime/debug"
)

// Info is what a binary was built from.
type Info struct {
	// Version is the module's version ("(devel)" for a build from a
	// checkout).
	Version string
	// Commit is the VCS revision, with "-dirty" when the tree had
	// uncommitted changes; empty when not known.
	Commit string
	// GoVersion is the Go that built it.
	GoVersion string
}

// Read reads the running binary's build information.
func Read() Info {
	info := Info{Version: "(devel)", GoVersion: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return info
	}
	if bi.Main.Version != "" {
		info.Version = bi.Main.Version
	}
	dirty := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			info.Commit = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if dirty && info.Commit != "" {
		info.Commit += "-dirty"
	}
	return info
}

// String is the one line --version prints: version, commit, Go.
func String() string {
	i := Read()
	commit := i.Commit
	if commit == "" {
		commit = "unknown commit"
	}
	return i.Version + " (" + commit + ", " + i.GoVersion + ")"
}
