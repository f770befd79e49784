// Package openaitest is a fast, deterministic fake of an OpenAI-compatible
// inference server as vLLM and llama.cpp's server speak it on the wire, for
// tests and benchmarks of a router in front of them. It needs only the
// standard library.
//
// # Routes
//
// GET /v1/models (with llama.cpp's router-mode "status" per model when a
// model has a Status), POST /v1/chat/completions, /v1/completions,
// /v1/embeddings and /v1/rerank, GET /health. Unknown paths are 404.
//
// # Replies and token counts
//
// A reply is a number of content tokens, streamed one per SSE chunk and
// ended by "data: [DONE]". The numbers are a pure function of the request:
//
//   - prompt_tokens = for each message (chat), prompt (completions), input
//     (embeddings) or document and the query (rerank): its
//     whitespace-separated words + PerMessageTokens (4).
//   - completion_tokens = the fault's "chunks" if given, else max_tokens or
//     max_completion_tokens (finish_reason "length"), else Config.Chunks
//     (DefaultChunks; finish_reason "stop"). A request with tools (and
//     tool_choice other than "none") gets one call of its first tool
//     instead, worth ToolCallTokens.
//
// Usage is reported the way vLLM does: always in a non-streamed reply, and
// in a stream only when stream_options.include_usage is set, as a last
// chunk with empty "choices". The LlamaCpp flavour adds llama.cpp's
// "timings" (prompt_n, predicted_n, ...) to the last choice chunk and to
// non-streamed replies. Config.NoUsage (or the fault's "no_usage") reports
// neither, like servers that count nothing. Models with Reasoning stream
// the first half of the reply as "reasoning_content".
//
// # Fault injection
//
// A request body may carry a "fake" object (see Fault), for example
//
//	"fake": {"status": 500, "error": "boom"}
//	"fake": {"hang": true}
//	"fake": {"chunks": 10, "delay_ms": 50, "fail_after_chunks": 3}
//	"fake": {"error_after_chunks": 2, "error": "engine died"}
//
// and any request may carry the same JSON in the X-Fake-OpenAI header.
//
// # Counters
//
// Requests and LastBody report per route; Counters sums the tokens of
// completed replies, whether or not they were reported on the wire. All are
// safe for concurrent use.
package openaitest
