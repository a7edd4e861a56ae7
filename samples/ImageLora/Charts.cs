using ScottPlot;

namespace ImageLora;

/// <summary>The sample's PNG charts: confusion matrices side by side, and the per-epoch curves of (b) and (c).</summary>
internal static class Charts
{
    /// <summary>
    /// One confusion matrix per method (rows: actual class, top to bottom; columns: predicted class), each cell showing its
    /// count and coloured by the share of its row.
    /// </summary>
    public static void SaveConfusionMatrices(string path, IReadOnlyList<RunResult> results, int[] actual)
    {
        string[] names = FashionMnist.ClassNames;
        int n = names.Length;
        var multiplot = new Multiplot();
        multiplot.AddPlots(results.Count);
        multiplot.Layout = new ScottPlot.MultiplotLayouts.Columns();
        var colormap = new ScottPlot.Colormaps.Viridis();
        for (int m = 0; m < results.Count; m++)
        {
            var plot = multiplot.GetPlot(m);
            var counts = Metrics.ConfusionMatrix(actual, results[m].Predicted, n);
            for (int a = 0; a < n; a++)
            {
                double rowTotal = Math.Max(1, Enumerable.Range(0, n).Sum(p => counts[a, p]));
                for (int p = 0; p < n; p++)
                {
                    double share = counts[a, p] / rowTotal;
                    double y = n - 1 - a;
                    var cell = plot.Add.Rectangle(p - 0.5, p + 0.5, y - 0.5, y + 0.5);
                    cell.FillColor = colormap.GetColor(share);
                    cell.LineWidth = 0;
                    if (counts[a, p] > 0)
                    {
                        var label = plot.Add.Text(counts[a, p].ToString(System.Globalization.CultureInfo.InvariantCulture), p, y);
                        label.LabelAlignment = Alignment.MiddleCenter;
                        label.LabelFontSize = 11;
                        label.LabelFontColor = share > 0.5 ? Colors.Black : Colors.White;
                    }
                }
            }

            double accuracy = Metrics.Accuracy(actual, results[m].Predicted);
            plot.Title($"{results[m].Name}\naccuracy {accuracy:F4}", size: 13);
            plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual(
                [.. Enumerable.Range(0, n).Select(i => (double)i)], names);
            plot.Axes.Bottom.TickLabelStyle.Rotation = 45;
            plot.Axes.Bottom.TickLabelStyle.Alignment = Alignment.MiddleLeft;
            plot.Axes.Left.TickGenerator = new ScottPlot.TickGenerators.NumericManual(
                [.. Enumerable.Range(0, n).Select(i => (double)(n - 1 - i))], names);
            plot.XLabel("predicted");
            plot.YLabel("actual");
            plot.Axes.SetLimits(-0.5, n - 0.5, -0.5, n - 0.5);
        }

        Save(multiplot, path, 620 * results.Count, 700);
    }

    /// <summary>
    /// Upper panel: mean training loss per epoch of (b) and (c). Lower panel: their validation accuracy per epoch, with the
    /// test accuracy of every method as a dashed line.
    /// </summary>
    public static void SaveEpochCurves(string path, IReadOnlyList<RunResult> results, int[] actual)
    {
        var multiplot = new Multiplot();
        multiplot.AddPlots(2);
        var loss = multiplot.GetPlot(0);
        var accuracy = multiplot.GetPlot(1);
        Color[] palette = [Colors.Gray, Colors.Blue, Colors.OrangeRed];
        double maxEpoch = Math.Max(1, results.SelectMany(r => r.Curve).Select(e => e.Epoch).DefaultIfEmpty(1).Max());
        for (int m = 0; m < results.Count; m++)
        {
            var r = results[m];
            var color = palette[m % palette.Length];
            if (r.Curve.Count > 0)
            {
                double[] epochs = [.. r.Curve.Select(e => (double)e.Epoch)];
                var l = loss.Add.Scatter(epochs, [.. r.Curve.Select(e => e.TrainingLoss)]);
                l.LegendText = $"{r.Name}: training loss";
                l.Color = color;
                l.LineWidth = 2;
                var v = accuracy.Add.Scatter(epochs, [.. r.Curve.Select(e => e.ValidationAccuracy)]);
                v.LegendText = $"{r.Name}: validation accuracy";
                v.Color = color;
                v.LineWidth = 2;
            }

            double test = Metrics.Accuracy(actual, r.Predicted);
            var line = accuracy.Add.HorizontalLine(test, 1.5f, color, LinePattern.Dashed);
            line.LegendText = $"{r.Name}: test accuracy {test:F4}";
        }

        loss.Title("ImageLora: training loss and validation accuracy per epoch");
        loss.YLabel("cross-entropy loss");
        loss.XLabel("epoch");
        loss.ShowLegend(Alignment.UpperRight);
        loss.Axes.SetLimitsX(0, maxEpoch + 0.5);
        accuracy.YLabel("accuracy");
        accuracy.XLabel("epoch");
        accuracy.ShowLegend(Alignment.LowerRight);
        accuracy.Axes.SetLimitsX(0, maxEpoch + 0.5);
        double low = results.SelectMany(r => r.Curve.Select(e => e.ValidationAccuracy)).Concat(results.Select(r => Metrics.Accuracy(actual, r.Predicted))).Min();
        accuracy.Axes.SetLimitsY(Math.Max(0, Math.Floor((low - 0.05) * 20) / 20), 1.0);
        Save(multiplot, path, 1000, 900);
    }

    /// <summary>Writes to a temporary file, then moves it into place.</summary>
    private static void Save(Multiplot multiplot, string path, int width, int height)
    {
        string tmp = path + ".tmp.png";
        multiplot.SavePng(tmp, width, height);
        File.Move(tmp, path, overwrite: true);
    }
}
