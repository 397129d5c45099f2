// Package deptest holds the test that keeps the import rules of docs/design.md:
// imports point down the data flow, framer imports nothing of ndlb's but the leaf invalid, and
// library packages do not import the test helpers.
package deptest
