using Microsoft.ML.Lora;

namespace SentimentLora;

/// <summary>Collects the training loss reported during fine-tuning and draws it as a PNG (loss per report, mean per epoch).</summary>
internal sealed class TrainingCurve
{
    private readonly List<LoraTrainingProgress> reports = [];

    public void Add(LoraTrainingProgress progress) => reports.Add(progress);

    /// <summary>Mean of the reported losses per epoch (each report averages the rows since the previous one).</summary>
    public IReadOnlyList<(int Epoch, double Loss)> EpochLosses() =>
        reports.GroupBy(r => r.Epoch).Select(g => (g.Key, g.Average(r => r.Loss))).ToList();

    public void Save(string path)
    {
        var plot = new ScottPlot.Plot();
        var steps = plot.Add.Scatter(reports.Select(r => (double)r.Step).ToArray(), reports.Select(r => r.Loss).ToArray());
        steps.LegendText = "training loss (per report)";
        steps.MarkerSize = 0;
        var epochs = EpochLosses();
        double stepsPerEpoch = reports.Count == 0 ? 1 : (double)reports[^1].TotalSteps / reports[^1].MaxEpochs;
        var means = plot.Add.Scatter(epochs.Select(e => e.Epoch * stepsPerEpoch).ToArray(), epochs.Select(e => e.Loss).ToArray());
        means.LegendText = "mean loss of the epoch (at its end)";
        means.MarkerSize = 9;
        plot.Title("SentimentLora: LoRA r=8 (query, value) on MiniLM");
        plot.XLabel("optimizer step");
        plot.YLabel("cross-entropy loss");
        plot.ShowLegend(ScottPlot.Alignment.UpperRight);
        string tmp = path + ".tmp.png";
        plot.SavePng(tmp, 900, 500);
        File.Move(tmp, path, overwrite: true);
    }
}
