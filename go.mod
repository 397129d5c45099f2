module github.com/ndlb/ndlb

go 1.26.8

require (
	github.com/cenkalti/backoff/v4 v4.3.0
	github.com/jonboulle/clockwork v0.5.0
	github.com/segmentio/ksuid v1.0.4
	go.uber.org/goleak v1.3.0
	golang.org/x/sync v0.24.0
	golang.org/x/sys v0.49.0
)
