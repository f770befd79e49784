package server

import (
	"bytes"
	"net/http"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/droverhq/drover/pkg/config"
)

// The dashboard shows an admin this replica's cache-affinity hit rate:
// three turns of one conversation are one miss and two hits.
func TestDashboardAffinityTile(t *testing.T) {
	b := newBrowser(t)
	fakes := affinityFakes(t, 2)
	e := newEnvWith(t, fakes, func(c *config.Config) {
		c.Auth.Keys = []config.APIKey{{ID: "root", Key: "secret-root", Role: "admin"}}
	})
	knowLoaded(t, e.srv)
	for turn := range 3 {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, e.url+"/api/chat", bytes.NewReader(convBody("tile", turn, "")))
		req.Header.Set("Authorization", "Bearer secret-root")
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("turn %d: %v %v", turn, resp, err)
		}
		resp.Body.Close()
	}
	if err := chromedp.Do(b.ctx, chromedp.Navigate(e.url+"/")); err != nil {
		t.Fatalf("loading the dashboard: %v", err)
	}
	b.enterKey("secret-root")
	b.wait("the affinity tile", `document.querySelector('#affinity-hit').textContent === '66.7 %'`)
	if sub := b.text("#affinity-sub"); sub == "" {
		t.Fatal("no detail under the hit rate")
	}
	b.shot("dashboard-affinity.png")
}
