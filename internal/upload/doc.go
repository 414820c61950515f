// Package upload reads upload bodies into commands, a record at a time:
// NDJSON, a JSON array and CSV, each through a reader that rejects a bad
// record on its own and bounds what one record may cost (Options). Formats
// is the one registry of what spool takes — the name, extensions and media
// type of each format — shared by ingress, which decodes uploads, and
// spoolctl, which picks the media type from a file's name and counts the
// records it sends with the same readers.
package upload
