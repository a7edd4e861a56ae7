using Microsoft.ML.Lora;
using ScottPlot;

namespace SentimentLora;

/// <summary>
/// Collects the progress reports of fine-tuning and draws them as a PNG: training loss (per report and mean per epoch)
/// and validation loss in the upper panel, validation accuracy per epoch in the lower one, both over epochs.
/// </summary>
internal sealed class TrainingCurve
{
    private readonly List<LoraTrainingProgress> reports = [];

    public void Add(LoraTrainingProgress progress) => reports.Add(progress);

    /// <summary>
    /// Per epoch run: the mean of the reported training losses (each report averages the rows since the previous one), and
    /// the validation loss and accuracy of the epoch's end (null without a validation set).
    /// </summary>
    public IReadOnlyList<EpochPoint> Epochs() =>
        reports.GroupBy(r => r.Epoch)
            .Select(g => new EpochPoint(g.Key, g.Average(r => r.Loss), g.Last().ValidationLoss, g.Last().ValidationAccuracy))
            .ToList();

    /// <summary>The epoch whose adapter fine-tuning keeps with a validation set: the first with the lowest validation loss.</summary>
    public int? KeptEpoch() => Epochs().Where(e => e.ValidationLoss is not null).MinBy(e => e.ValidationLoss)?.Epoch;

    /// <summary>
    /// Writes the chart: losses over epochs; with validation also a lower panel of validation accuracy per epoch, where
    /// <paramref name="testAccuracy"/> (of the kept model) is a reference line (without validation it goes in the title).
    /// </summary>
    public void Save(string path, string title, double testAccuracy)
    {
        var epochs = Epochs();
        int? kept = KeptEpoch();
        bool validated = epochs.Any(e => e.ValidationAccuracy is not null);
        double maxX = epochs.Count == 0 ? 1 : epochs[^1].Epoch;

        var multiplot = new Multiplot();
        multiplot.AddPlots(validated ? 2 : 1);
        var loss = multiplot.GetPlot(0);
        DrawLosses(loss, epochs);
        loss.Title(validated ? title : $"{title}: test accuracy {testAccuracy:F4}");
        loss.Axes.SetLimitsX(0, maxX + 0.1);
        if (validated)
        {
            var accuracy = multiplot.GetPlot(1);
            DrawAccuracy(accuracy, epochs, testAccuracy);
            accuracy.Axes.SetLimitsX(0, maxX + 0.1);
            if (kept is int k)
            {
                foreach (var plot in new[] { loss, accuracy })
                {
                    var marker = plot.Add.VerticalLine(k, 1, Colors.Black, LinePattern.Dotted);
                    marker.LegendText = $"kept adapter: epoch {k} (lowest validation loss)";
                }
            }
        }

        string tmp = path + ".tmp.png";
        multiplot.SavePng(tmp, 900, validated ? 800 : 500);
        File.Move(tmp, path, overwrite: true);
    }

    private void DrawLosses(Plot plot, IReadOnlyList<EpochPoint> epochs)
    {
        double stepsPerEpoch = reports.Count == 0 ? 1 : (double)reports[^1].TotalSteps / reports[^1].MaxEpochs;
        var perReport = plot.Add.Scatter(reports.Select(r => r.Step / stepsPerEpoch).ToArray(), reports.Select(r => r.Loss).ToArray());
        perReport.LegendText = "training loss (per progress report)";
        perReport.MarkerSize = 0;
        perReport.LineWidth = 1;
        perReport.Color = Colors.Gray.WithAlpha(0.6);
        var trainMean = plot.Add.Scatter(epochs.Select(e => (double)e.Epoch).ToArray(), epochs.Select(e => e.TrainingLoss).ToArray());
        trainMean.LegendText = "training loss (mean of the epoch)";
        trainMean.MarkerSize = 9;
        trainMean.LineWidth = 2;
        trainMean.Color = Colors.Blue;
        var validated = epochs.Where(e => e.ValidationLoss is not null).ToList();
        if (validated.Count > 0)
        {
            var validation = plot.Add.Scatter(validated.Select(e => (double)e.Epoch).ToArray(), validated.Select(e => e.ValidationLoss!.Value).ToArray());
            validation.LegendText = "validation loss (end of epoch)";
            validation.MarkerSize = 9;
            validation.LineWidth = 2;
            validation.Color = Colors.OrangeRed;
        }

        plot.YLabel("cross-entropy loss");
        plot.XLabel("epoch");
        plot.ShowLegend(Alignment.UpperRight);
    }

    private static void DrawAccuracy(Plot plot, IReadOnlyList<EpochPoint> epochs, double testAccuracy)
    {
        var validated = epochs.Where(e => e.ValidationAccuracy is not null).ToList();
        var validation = plot.Add.Scatter(validated.Select(e => (double)e.Epoch).ToArray(), validated.Select(e => e.ValidationAccuracy!.Value).ToArray());
        validation.LegendText = "validation accuracy (end of epoch)";
        validation.MarkerSize = 9;
        validation.LineWidth = 2;
        validation.Color = Colors.OrangeRed;
        var test = plot.Add.HorizontalLine(testAccuracy, 1.5f, Colors.Green, LinePattern.Dashed);
        test.LegendText = $"test accuracy of the kept model ({testAccuracy:F4})";
        plot.YLabel("accuracy");
        plot.XLabel("epoch");
        plot.ShowLegend(Alignment.LowerRight);
        double low = validated.Select(e => e.ValidationAccuracy!.Value).Append(testAccuracy).Min();
        plot.Axes.SetLimitsY(Math.Max(0, Math.Floor((low - 0.03) * 50) / 50), 1.0);
    }

    /// <summary>One epoch's point of the curve.</summary>
    public sealed record EpochPoint(int Epoch, double TrainingLoss, double? ValidationLoss, double? ValidationAccuracy);
}
