"""The run inspector: `runs/<run>/inspect.html`, one offline page per run (`page.write_inspect`).

`read` loads a run directory tolerantly (masking every string), `timeline`, `spend` and
`phase` render the page's sections with the pieces in `html`, and `page` puts them together.
"""
