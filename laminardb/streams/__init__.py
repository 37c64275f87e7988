"""Stream subscriptions over the cluster: the coordinator's receiver, fan-out and merge rules.

`hub.StreamHub` receives the workers' stream results and fans them out to subscribers,
`feed.Feed` is one subscriber's bounded buffer, `union.why_not_union` decides from a
stream's SQL whether its per-worker outputs merge by plain union, and `merge` / `merged`
split a windowed aggregate into per-worker partials, keep the cluster watermark and merge
the partials per window (DESIGN.md decision 7).
"""
