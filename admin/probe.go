package admin

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
)

// ErrProbeAddr is returned by Probe for an address that is not HOST:PORT.
var ErrProbeAddr = errors.New("want HOST:PORT")

// Probe asks the admin API at addr (0.0.0.0 and :: mean loopback) for
// /healthz within 3 s: what `ndlb healthcheck` runs in a container's
// HEALTHCHECK. It returns the URL asked, and an error unless the answer is
// 200.
func Probe(addr string) (url string, err error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("%w: %q", ErrProbeAddr, addr)
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	url = "http://" + net.JoinHostPort(host, port) + "/healthz"
	client := http.Client{Timeout: 3 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return url, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return url, fmt.Errorf("%s answered %s", url, resp.Status)
	}
	return url, nil
}
