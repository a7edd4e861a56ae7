namespace ImageLora;

/// <summary>Accuracy, macro-F1 and the confusion matrix of predicted against actual class indices.</summary>
internal static class Metrics
{
    public static double Accuracy(int[] actual, int[] predicted)
    {
        Check(actual, predicted);
        return actual.Length == 0 ? 0 : actual.Zip(predicted).Count(p => p.First == p.Second) / (double)actual.Length;
    }

    /// <summary>counts[actual, predicted].</summary>
    public static int[,] ConfusionMatrix(int[] actual, int[] predicted, int classes)
    {
        Check(actual, predicted);
        var counts = new int[classes, classes];
        for (int i = 0; i < actual.Length; i++)
        {
            counts[actual[i], predicted[i]]++;
        }

        return counts;
    }

    /// <summary>The unweighted mean over classes of F1 = 2·precision·recall / (precision + recall) (0 for a class never right).</summary>
    public static double MacroF1(int[] actual, int[] predicted, int classes)
    {
        var counts = ConfusionMatrix(actual, predicted, classes);
        double sum = 0;
        for (int c = 0; c < classes; c++)
        {
            double truePositives = counts[c, c];
            double predictedC = Enumerable.Range(0, classes).Sum(a => counts[a, c]);
            double actualC = Enumerable.Range(0, classes).Sum(p => counts[c, p]);
            sum += truePositives == 0 ? 0 : 2 * truePositives / (predictedC + actualC);
        }

        return sum / classes;
    }

    private static void Check(int[] actual, int[] predicted)
    {
        if (actual.Length != predicted.Length)
        {
            throw new ArgumentException($"{predicted.Length} predictions for {actual.Length} labels.", nameof(predicted));
        }
    }
}
