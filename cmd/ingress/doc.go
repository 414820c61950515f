// Command ingress is spool's upload API server.
package main
