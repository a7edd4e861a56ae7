namespace Microsoft.ML.Lora.Benchmarks;

/// <summary>PNG charts for bench/README.md (ScottPlot).</summary>
internal static class Plots
{
    public static void Scaling(IReadOnlyList<(string axis, int batch, int seq, double ms)> rows, string path)
    {
        var plot = new ScottPlot.Plot();
        foreach (string axis in new[] { "seq", "batch" })
        {
            var points = rows.Where(r => r.axis == axis).ToList();
            double[] tokens = points.Select(r => (double)r.batch * r.seq).ToArray();
            double[] ms = points.Select(r => r.ms).ToArray();
            var line = plot.Add.Scatter(tokens, ms);
            line.LegendText = axis == "seq" ? "sequence length 32…256 (batch 32)" : "batch 8…64 (seq 64)";
        }
        plot.Title("LoRA r=8 (q,v) training step on MiniLM: time vs tokens per batch");
        plot.XLabel("tokens per batch");
        plot.YLabel("step time (ms)");
        plot.ShowLegend();
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        plot.SavePng(path, 900, 550);
    }

    public static void Lines(string title, string xLabel, string yLabel, IReadOnlyList<(string label, double[] xs, double[] ys)> series, string path)
    {
        var plot = new ScottPlot.Plot();
        foreach (var (label, xs, ys) in series)
        {
            var line = plot.Add.Scatter(xs, ys);
            line.LegendText = label;
        }
        plot.Title(title);
        plot.XLabel(xLabel);
        plot.YLabel(yLabel);
        plot.ShowLegend();
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        plot.SavePng(path, 900, 550);
    }
}
