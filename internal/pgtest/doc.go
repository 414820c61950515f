// Package pgtest gives each test its own migrated schema in a real
// PostgreSQL (TEST_DATABASE_URL, default the local server's database test),
// dropped when the test ends. No Docker, no mocks.
package pgtest
