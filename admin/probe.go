package admin

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
)

// ErrProbeAddr is returned by Probe for an address that is not HOST:PORT.
var ErrProbeAddr = errors.New("want HOST:PORT")

// Probe asks the admin API at addr (0.0.0.0 and :: mean loopback) for
// /healthz within 3 s, over HTTPS when useTLS (its certificate is not
// verified: the probe asks whether the process answers, and its name is
// rarely the loopback address): what `ndlb healthcheck` runs in a
// container's HEALTHCHECK. It returns the URL asked, and an error unless
// the answer is 200.
func Probe(addr string, useTLS bool) (url string, err error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("%w: %q", ErrProbeAddr, addr)
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	scheme, client := "http", http.Client{Timeout: 3 * time.Second}
	if useTLS {
		scheme = "https"
		client.Transport = &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}}
	}
	url = scheme + "://" + net.JoinHostPort(host, port) + "/healthz"
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
