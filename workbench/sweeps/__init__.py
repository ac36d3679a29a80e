"""Sweeps: families of runs over the specification's settings (grid and random search).

`space` parses what to vary, `record` is the sweep's own record in the runs directory,
`runner` runs the trials as ordinary `gptbench train --no-ui` runs, `results` ranks them.
"""
