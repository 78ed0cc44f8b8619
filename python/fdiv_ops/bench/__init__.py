"""Benchmark harness behind ``fdiv-ops bench``.

spec.py       the interface each op declares (OpBench, Case, Inputs)
registry.py   which op files exist and which of their ops this build of fdiv_ops has
<op>.py       one per op: f_distill, f_divergence, sequence_logprobs, fused_linear
providers.py  fdiv_ops / torch / compile / trl / liger, the timed steps, the error metric
idioms.py     the eager expressions users write (the torch and compile providers)
peers.py      whether trl / liger_kernel can run here, without importing them
fmt.py        numbers with units and three significant digits (also used by make_readme_table.py)
timing.py     medians and p20/p80, interleaved rounds, CUDA events on a GPU
roofline.py   the measured copy bandwidth
memory.py     peak memory (CUDA allocator; CPU peak RSS via memprobe.py subprocesses)
runner.py     the loop that produces the JSON records
report.py     rich or plain table, headline speed-ups, progress display;  plot.py  the --plot PNG
"""
