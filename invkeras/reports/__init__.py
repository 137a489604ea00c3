"""Reports: plots, image grids and the HTML/Markdown report.

    plots             figures from plain data (NCE by layer, NCE over training, accuracy)
    grids             image grids saved as PNG (samples, reconstructions, top-k)
    collect           finding a run directory's artefacts; the inverter metadata contract
    sections          Section/Table/Image, `register_section` and `build_sections`
    builtin_sections  the report's own sections (classifiers, inverters, ... recipes)
    render            HTML and Markdown output
    report            `write_report(run_dir, out=None)`, the entry point

A command with its own artefact kind adds a report section from its own module with
`invkeras.reports.sections.register_section`; see that module.
"""
