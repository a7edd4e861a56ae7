using System.Globalization;
using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.ML;

namespace LoraServing;

/// <summary>Runs the bounded loopback load test per serving path (TorchSharp LoRA models, ONNX models) and writes a report.</summary>
public static class LoadTestReport
{
    /// <summary>Starts the server on a free loopback port, checks every answer against <c>Transform</c>, and reports.</summary>
    /// <returns>The report as Markdown (also written to <paramref name="output"/>/serving-http.md with a chart).</returns>
    public static async Task<string> RunAsync(MLContext ml, ModelCatalog catalog, string dataPath, int requests, int clients, string output)
    {
        var app = ServingApp.Build(catalog, "http://127.0.0.1:0");
        await app.StartAsync();
        try
        {
            var address = new Uri(app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First() + "/");

            // Held-out sentences: the last 100 of each source (the demo adapters trained on the first 240).
            var texts = DemoModels.Sources.SelectMany(s => DemoModels.Read(dataPath, s).TakeLast(100)).Select(r => r.Text).ToList();
            var results = new List<LoadTest.Result>();
            foreach (var kind in catalog.Models.Values.GroupBy(m => m.Kind).OrderBy(g => g.Key, StringComparer.Ordinal))
            {
                var work = new List<LoadTest.Work>();
                foreach (var model in kind)
                {
                    var expected = model.ScoreBatch(ml, texts);
                    work.AddRange(texts.Select((t, i) => new LoadTest.Work(model.Name, t, expected[i])));
                }

                // Interleave models so consecutive requests go to different models.
                work = [.. work.Select((w, i) => (w, i)).OrderBy(p => p.i % texts.Count).ThenBy(p => p.i).Select(p => p.w)];
                await LoadTest.RunAsync(address, "warm-up", work, clients, Math.Min(40, requests), TimeSpan.FromSeconds(60));
                var label = $"{kind.Key} ({kind.Count()} model{(kind.Count() == 1 ? "" : "s")})";
                results.Add(await LoadTest.RunAsync(address, label, work, clients, requests, TimeSpan.FromMinutes(3)));
            }

            var text = new StringBuilder();
            text.AppendLine(CultureInfo.InvariantCulture, $"Loopback load test: {clients} clients, {requests} requests per path, every answer checked against Transform (|Δscore| ≤ 1e-4).");
            text.AppendLine();
            text.AppendLine("| path | requests | requests/s | p50 ms | p99 ms | process RSS MiB | wrong or failed |");
            text.AppendLine("| --- | --- | --- | --- | --- | --- | --- |");
            foreach (var r in results)
            {
                text.AppendLine(r.ToMarkdownRow());
            }

            Directory.CreateDirectory(output);
            File.WriteAllText(Path.Combine(output, "serving-http.md"), text.ToString());
            DrawChart(results, Path.Combine(output, "serving-http.png"));
            return text.ToString();
        }
        finally
        {
            await app.StopAsync();
        }
    }

    private static void DrawChart(List<LoadTest.Result> results, string path)
    {
        var plot = new ScottPlot.Plot();
        var bars = new List<ScottPlot.Bar>();
        for (int i = 0; i < results.Count; i++)
        {
            bars.Add(new ScottPlot.Bar { Position = (3 * i) + 1, Value = results[i].P50Milliseconds, FillColor = ScottPlot.Colors.SteelBlue });
            bars.Add(new ScottPlot.Bar { Position = (3 * i) + 2, Value = results[i].P99Milliseconds, FillColor = ScottPlot.Colors.Orange });
        }

        plot.Add.Bars(bars);
        plot.Axes.Bottom.SetTicks([.. results.Select((_, i) => (3.0 * i) + 1.5)], [.. results.Select(r => $"{r.Label}\n{r.RequestsPerSecond:F0} req/s")]);
        plot.Axes.Left.Label.Text = "latency (ms): p50 blue, p99 orange";
        plot.Title("LoraServing: loopback load test");
        plot.Axes.Margins(bottom: 0);
        plot.SavePng(path, 700, 420);
    }
}
