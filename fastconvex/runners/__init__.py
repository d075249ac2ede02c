"""Running independent tasks: one interface (:class:`~fastconvex.runners.base.Runner`),
two implementations -- in this process (:mod:`.local`) and as Ray tasks
(:mod:`.ray`, extra ``[ray]``) -- and the Ray connection they share
(:mod:`.session`). Sweeps and the Ray embedding run their tasks through it; a
task is a plain function, the same on both."""
