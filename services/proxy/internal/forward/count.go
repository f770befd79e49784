package forward

import "bytes"

// countContent counts the content chunks in p, a piece of a streamed
// answer as the backend sent it: every non-empty JSON string under a key
// that carries generated text, in any of the stream formats Drover reads
// (Ollama's "content", "response" and "thinking"; OpenAI's "content",
// "reasoning_content", "reasoning" and a completion's "text"; Anthropic's
// "text", "thinking" and "partial_json" deltas; the Responses API's
// "delta"). Servers send one token per chunk, so for an answer cut short
// this is the output tokens the client saw; an answer that ends normally
// is counted by what the backend reports instead. A key split across two
// reads is missed, so the count can fall short by one per read boundary
// that splits one.
//
// A quoted key followed by a colon cannot occur inside a JSON string (its
// quotes are escaped there), so `":"` marks a key whose value is a string.
//
// It runs on every read of every stream, so it looks for the colon (rarer
// than the quote) and tests only the keys that end with the byte before
// its closing quote: about 100 ns for an Ollama chat chunk, where
// bytes.Index for `":"` and a suffix test per key took 250-350
// (BenchmarkCountContent).
func countContent(p []byte) (n int64) {
	for i := 1; i+2 < len(p); {
		j := bytes.IndexByte(p[i:len(p)-2], ':')
		if j < 0 {
			return n
		}
		i += j
		if p[i-1] != '"' || p[i+1] != '"' {
			i++
			continue
		}
		if p[i+2] != '"' && contentKey(p[:i-1]) {
			n++
		}
		i += 2 // past `":"`, as the key's value starts there
	}
	return n
}

var contentKeys = [][]byte{
	[]byte(`"content`), []byte(`"response`), []byte(`"thinking`), []byte(`"text`),
	[]byte(`"delta`), []byte(`"reasoning_content`), []byte(`"reasoning`), []byte(`"partial_json`),
}

// contentKeysByEnd holds contentKeys by their last byte.
var contentKeysByEnd = func() (by [256][][]byte) {
	for _, k := range contentKeys {
		by[k[len(k)-1]] = append(by[k[len(k)-1]], k)
	}
	return by
}()

// contentKey reports whether head ends with one of contentKeys.
func contentKey(head []byte) bool {
	if len(head) == 0 {
		return false
	}
	for _, k := range contentKeysByEnd[head[len(head)-1]] {
		if bytes.HasSuffix(head, k) {
			return true
		}
	}
	return false
}
