package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
)

// chromiumPath finds Debian's chromium (.ci/run installs it).
func chromiumPath(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("no chromium: .ci/run installs Debian's chromium package")
	return ""
}

// The status page, in headless Chromium: it loads with no network but
// ndlb, shows the targets with their states, and its chart moves when
// lines flow; the listener's ledger and disk spool are shown.
// NDLB_SCREENSHOT=path saves a screenshot (docs/status.png).
func TestStatusPageInChromium(t *testing.T) {
	w := newWorld(t, 2)
	p := startNDLB(t, "--target", w.targets(), "--admin", "127.0.0.1:0", "--spool-dir", t.TempDir())
	api := newAdminAPI(t, p, "")
	api.call("POST", "/api/v1/targets/"+w.sinks[1].Addr()+"/drain", nil)

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromiumPath(t)),
		chromedp.NoSandbox, chromedp.WindowSize(1100, 700))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancelT := context.WithTimeout(ctx, 60*time.Second)
	defer cancelT()

	// Every request the page makes goes to ndlb: it loads nothing from
	// outside (an operator's console may have no internet).
	var mu sync.Mutex
	var requested []string
	if err := chromedp.Listen(ctx, func(ev any) {
		if r, ok := ev.(*network.EventRequestWillBeSent); ok {
			mu.Lock()
			requested = append(requested, r.Request.URL)
			mu.Unlock()
		}
	}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		if len(requested) == 0 {
			t.Error("no request was seen: the check of what the page loads did not run")
		}
		for _, u := range requested {
			if !strings.HasPrefix(u, api.url+"/") && !strings.HasPrefix(u, "data:") {
				t.Errorf("the status page requested %s, outside ndlb", u)
			}
		}
	}()
	row := chromedp.CSS(`tr[data-addr="` + w.sinks[0].Addr() + `"]`)
	if err := chromedp.Do(ctx, chromedp.Navigate(api.url+"/"), chromedp.WaitVisible(row)); err != nil {
		t.Fatal(err)
	}
	text, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#listeners")))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{w.sinks[0].Addr(), w.sinks[1].Addr(), "up", "draining", "default"} {
		if !strings.Contains(text, want) {
			t.Fatalf("page lacks %q:\n%s", want, text)
		}
	}
	// Lines flow for a few seconds: the page's rate series goes above 0.
	wait := pacedClients(p.addr, 2, 20000, 3*time.Second)
	var peak float64
	deadline := time.Now().Add(15 * time.Second)
	for peak == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the chart never showed traffic")
		}
		var err error
		peak, err = chromedp.Run(ctx, chromedp.Evaluate[float64](
			`Math.max(0, ...(window.ndlbStatus.series["default `+w.sinks[0].Addr()+`"] || []))`))
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := wait(); err != nil {
		t.Fatal(err)
	}
	// The listener's ledger: every line received is delivered.
	for deadline := time.Now().Add(15 * time.Second); ; {
		got, err := chromedp.Run(ctx, chromedp.Evaluate[string](
			`[...document.querySelectorAll("#l-default .ledger span")].map(s => s.textContent).join("; ")`))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(got, "received 40.0 k") && strings.Contains(got, "delivered 40.0 k") &&
			strings.Contains(got, "in flight 0") && strings.Contains(got, "dropped shutdown 0") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the page's ledger does not show 40 000 lines received and delivered: %q", got)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The spool: open, everything appended, nothing undelivered.
	for deadline := time.Now().Add(15 * time.Second); ; {
		got, err := chromedp.Run(ctx, chromedp.Evaluate[string](
			`[...document.querySelectorAll("#l-default .spool span")].map(s => s.textContent).join("; ")`))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(got, "MiB of 4096.0 MiB") && strings.Contains(got, "undelivered 0 lines in 0 batches") &&
			!strings.Contains(got, "appends 0") && strings.Contains(got, "errors 0") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the page's spool line: %q", got)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := chromedp.Do(ctx, chromedp.Sleep(1500*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "status.png")
	if p := os.Getenv("NDLB_SCREENSHOT"); p != "" {
		path = p
	}
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("peak %.0f lines/s on the chart; screenshot %s (%d bytes)", peak, path, len(shot))
	p.stopOK()
}
