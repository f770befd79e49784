package usage

// MaxTokens is the most tokens one count may say: 2^32, about 4.3
// billion. No model's context window comes near it (the largest are about
// ten million), so a larger count is a backend's bug or lie; it is
// saturated here instead of trusted, so that no total can overflow: sums of
// saturated counts fit an int64 for 2^31 requests, and ClickHouse's UInt64
// columns for 2^32 (docs/hostile.md).
const MaxTokens = 1 << 32

// ClampTokens is n within [0, MaxTokens]: a negative count adds nothing, an
// absurd one adds MaxTokens.
func ClampTokens(n int64) int64 { return min(max(n, 0), MaxTokens) }

// addSat is a+b saturated at the int64 range instead of wrapping.
func addSat(a, b int64) int64 {
	s := a + b
	switch {
	case b > 0 && s < a:
		return 1<<63 - 1
	case b < 0 && s > a:
		return -1 << 63
	}
	return s
}
