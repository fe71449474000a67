"""Training the fusion model: cached backbone features, contrastive losses, a resumable loop.

Entry points: `encoders.training.train.train(items, out, settings)` (what `prodsearch train`
calls), `encoders.training.data` (catalog JSONL and the openclipart train split) and
`encoders.training.measure` (a quick shelf measurement on cached features)."""
