// Package ollamatest is a fast, deterministic fake of an Ollama v0.17.4
// server for tests and benchmarks. It speaks Ollama's wire protocol (routes,
// status codes, Content-Types, JSON field names and order, NDJSON streams,
// error messages) closely enough that a router cannot tell it from the real
// thing, but answers in microseconds and lets tests count and misbehave.
// `make conformance` holds it to that: TestFakeMatchesOllama in
// services/proxy/conformance sends the same requests to real Ollama and to
// the fake and compares status, Content-Type, JSON shape and error wording.
//
// # Routes
//
// GET/HEAD /, /api/version, /api/tags; GET /api/ps; POST /api/show,
// /api/chat, /api/generate, /api/embed, /api/embeddings, /api/pull,
// /api/push, /api/create, /api/copy; DELETE /api/delete; HEAD/POST
// /api/blobs/{digest}. Model names are normalised as Ollama does
// ("tiny" is registry.ollama.ai/library/tiny:latest, case-insensitive).
//
// # Replies and token counts
//
// A chat or generate reply is a number of content chunks followed by a
// final done chunk; every content chunk is one token (see ReplyText). The
// numbers are a pure function of the request:
//
//   - prompt_eval_count = for each message (chat) or for the prompt and, when
//     set, the system field (generate): the number of whitespace-separated
//     words in it + PerMessageTokens (4). /api/embed counts each input the
//     same way.
//   - eval_count = the fault's "chunks" if given, else options.num_predict if
//     set (>= 0; done_reason "length"), else Config.Chunks (default
//     DefaultChunks; done_reason "stop"). eval_count is left out when 0, as
//     Ollama's omitempty does.
//
// Prompt caching (prefixcache.go): each model has Parallel slots (or
// DefaultCacheSlots) with an LRU of the prompt's token blocks; a request
// takes the free slot with the longest cached prefix, waits
// Config.PromptTokenCost per uncached token before its first token, and
// reports the whole prompt in prompt_eval_count but only the uncached part
// in prompt_eval_duration, as Ollama does. CachedPromptTokens sums the hits.
//
// Models with the thinking capability (unless "think": false) send the first
// half of the chunks as thinking, the rest as content.
//
// # Fault injection
//
// A request body may carry a "fake" object (see Fault), for example
//
//	"fake": {"status": 500, "error": "boom"}
//	"fake": {"hang": true}
//	"fake": {"chunks": 10, "delay_ms": 50, "fail_after_chunks": 3}
//	"fake": {"error_after_chunks": 2, "error": "runner crashed"}
//
// and any request may carry the same JSON in the X-Fake-Ollama header.
// Server methods change behaviour for all requests: SetFailure, SetHang,
// Down/Up, AddModel/RemoveModel, SetLoaded, SetChunks, SetChunkDelay.
//
// # Counters
//
// Requests counts hits per route; Counters sums the token counts of
// completed replies; InFlight and MaxInFlight gauge concurrent generations
// per model, to check a router's concurrency caps. All are atomics.
package ollamatest
