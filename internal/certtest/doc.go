// Package certtest makes real certificate authorities and certificates for
// tests, written to PEM files as an operator would have them.
package certtest
