package forward

import (
	"net/http"
	"testing"
)

// A JSON body is whole once its outermost value closed, whatever its
// strings hold; any proper prefix of it is not.
func TestJSONShape(t *testing.T) {
	for _, doc := range []string{
		`{"a":"x}]\"{","b":[1,{"c":"\\"}],"d":null}`,
		`[{"x":"}"}]`,
		`"a \" string"`,
		"{\"id\":\"x\",\"choices\":[{\"message\":{\"content\":\"{[\\\\\\\"\"}}]}\n",
	} {
		for i := 0; i <= len(doc); i++ {
			var s jsonShape
			s.Write([]byte(doc[:i]))
			whole := i == len(doc) || (i == len(doc)-1 && doc[i] == '\n')
			if s.whole() != whole {
				t.Errorf("%q: whole %v at %d of %d bytes", doc, s.whole(), i, len(doc))
			}
		}
	}
}

// Only a JSON body whose end is the connection's close is judged by its
// shape; one without a body never.
func TestVerifyEnd(t *testing.T) {
	h := func(ct string) http.Header { return http.Header{"Content-Type": {ct}} }
	for _, c := range []struct {
		resp http.Response
		want bool
	}{
		{http.Response{ProtoMajor: 1, StatusCode: 200, ContentLength: -1, Header: h("application/json; charset=utf-8")}, true},
		{http.Response{ProtoMajor: 1, StatusCode: 400, ContentLength: -1, Header: h("application/json")}, true},
		{http.Response{ProtoMajor: 1, StatusCode: 204, ContentLength: -1, Header: h("application/json")}, false},
		{http.Response{ProtoMajor: 1, StatusCode: 200, ContentLength: -1, Header: h("application/json"), Request: &http.Request{Method: http.MethodHead}}, false},
		{http.Response{ProtoMajor: 1, ContentLength: 10, Header: h("application/json")}, false},
		{http.Response{ProtoMajor: 1, ContentLength: -1, TransferEncoding: []string{"chunked"}, Header: h("application/json")}, false},
		{http.Response{ProtoMajor: 2, ContentLength: -1, Header: h("application/json")}, false},
		{http.Response{ProtoMajor: 1, ContentLength: -1, Header: h("text/plain")}, false},
	} {
		if got := verifyEnd(&c.resp); got != c.want {
			t.Errorf("%+v: %v, want %v", c.resp, got, c.want)
		}
	}
}
