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
func countContent(p []byte) (n int64) {
	for {
		i := bytes.Index(p, keyString)
		if i < 0 {
			return n
		}
		if v := i + len(keyString); v < len(p) && p[v] != '"' && contentKey(p[:i]) {
			n++
		}
		p = p[i+len(keyString):]
	}
}

var keyString = []byte(`":"`)

var contentKeys = [][]byte{
	[]byte(`"content`), []byte(`"response`), []byte(`"thinking`), []byte(`"text`),
	[]byte(`"delta`), []byte(`"reasoning_content`), []byte(`"reasoning`), []byte(`"partial_json`),
}

// contentKey reports whether head ends with one of contentKeys.
func contentKey(head []byte) bool {
	for _, k := range contentKeys {
		if bytes.HasSuffix(head, k) {
			return true
		}
	}
	return false
}
