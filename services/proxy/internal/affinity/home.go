package affinity

// A prompt cached nowhere still has to land somewhere, and where it lands
// decides which prompts its slot stops holding: Ollama gives it the
// lowest-numbered free slot of the backend it reaches, whatever that slot
// held. Sent to the least loaded backend (the first, on a quiet fleet),
// every group's misses churn the same few slots. Sent to a home chosen by
// rendezvous hashing of the prompt's first block (for a chat, the start of
// its system prompt: what a group of conversations shares), each group's
// misses land on one backend, a backend's slots churn among about 1/N of
// the groups, and every replica computes the same home without talking
// (docs/routing.md).

// Home is the key a prompt's home is chosen by: the hash of its first
// block, 0 when it has no whole block (then it has no home and goes by
// load).
func (p *Prompt) Home() uint64 {
	if p == nil || len(p.Chain) == 0 {
		return 0
	}
	return p.Chain[0]
}

// HomeScore is backend's rendezvous weight for home (Prompt.Home): the
// candidate with the highest score is the prompt's home. It depends on
// nothing but the two, so every replica ranks alike, and removing a
// backend moves only the prompts whose home it was.
func HomeScore(home uint64, backend string) uint64 {
	// FNV-1a over the name, then both mixed through splitmix64's
	// finaliser: a fixed function, as the chain hashes are.
	h := uint64(14695981039346656037)
	for i := 0; i < len(backend); i++ {
		h ^= uint64(backend[i])
		h *= 1099511628211
	}
	return finish(home ^ finish(h))
}
