package forward

import (
	"net/http"
	"reflect"
	"testing"
)

func TestHopByHopHeaders(t *testing.T) {
	cases := []struct {
		name string
		src  http.Header
		dst  http.Header // what dst has before the copy
		req  http.Header // after copyRequestHeaders
		resp http.Header // after copyHeaders
	}{
		{
			name: "end-to-end headers pass",
			src:  http.Header{"Content-Type": {"application/json"}, "X-Trace": {"1"}},
			req:  http.Header{"Content-Type": {"application/json"}, "X-Trace": {"1"}},
			resp: http.Header{"Content-Type": {"application/json"}, "X-Trace": {"1"}},
		},
		{
			name: "standard hop-by-hop headers are dropped",
			src:  http.Header{"Connection": {"keep-alive"}, "Keep-Alive": {"timeout=5"}, "Transfer-Encoding": {"chunked"}, "Te": {"trailers"}, "Upgrade": {"h2c"}, "X-Trace": {"1"}},
			req:  http.Header{"X-Trace": {"1"}},
			resp: http.Header{"X-Trace": {"1"}},
		},
		{
			name: "headers named in Connection are dropped",
			src:  http.Header{"Connection": {"X-Hop, x-other", " X-Third "}, "X-Hop": {"a"}, "X-Other": {"b"}, "X-Third": {"c"}, "X-Trace": {"1"}},
			req:  http.Header{"X-Trace": {"1"}},
			resp: http.Header{"X-Trace": {"1"}},
		},
		{
			name: "empty Connection names drop nothing",
			src:  http.Header{"Connection": {", ,"}, "X-Trace": {"1"}},
			req:  http.Header{"X-Trace": {"1"}},
			resp: http.Header{"X-Trace": {"1"}},
		},
		{
			name: "client credentials and encoding stay with Drover",
			src:  http.Header{"Authorization": {"Bearer client"}, "Cookie": {"c"}, "Accept-Encoding": {"gzip"}, "Content-Length": {"9"}, "X-Trace": {"1"}},
			req:  http.Header{"X-Trace": {"1"}},
			resp: http.Header{"Authorization": {"Bearer client"}, "Cookie": {"c"}, "Accept-Encoding": {"gzip"}, "Content-Length": {"9"}, "X-Trace": {"1"}},
		},
		{
			name: "Anthropic's x-api-key is Drover's too; its version header passes",
			src:  http.Header{"X-Api-Key": {"client"}, "Anthropic-Version": {"2023-06-01"}},
			req:  http.Header{"Anthropic-Version": {"2023-06-01"}},
			resp: http.Header{"X-Api-Key": {"client"}, "Anthropic-Version": {"2023-06-01"}},
		},
		{
			name: "a backend's cookies and CORS headers never reach the client",
			src:  http.Header{"Set-Cookie": {"session=backend"}, "Access-Control-Allow-Origin": {"*"}, "Access-Control-Allow-Credentials": {"true"}, "X-Trace": {"1"}},
			req:  http.Header{"Set-Cookie": {"session=backend"}, "Access-Control-Allow-Origin": {"*"}, "Access-Control-Allow-Credentials": {"true"}, "X-Trace": {"1"}},
			resp: http.Header{"X-Trace": {"1"}},
		},
		{
			name: "the backend's own credentials win",
			src:  http.Header{"X-Api-Key": {"client"}},
			dst:  http.Header{"X-Api-Key": {"backend"}},
			req:  http.Header{"X-Api-Key": {"backend"}},
			resp: http.Header{"X-Api-Key": {"client"}},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req := c.dst.Clone()
			if req == nil {
				req = http.Header{}
			}
			copyRequestHeaders(req, c.src)
			if !reflect.DeepEqual(req, c.req) {
				t.Errorf("request headers: got %v, want %v", req, c.req)
			}
			resp := http.Header{}
			copyHeaders(resp, c.src)
			if !reflect.DeepEqual(resp, c.resp) {
				t.Errorf("response headers: got %v, want %v", resp, c.resp)
			}
		})
	}
}
