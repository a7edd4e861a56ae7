using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Lora.Models;
using TorchSharp;

namespace SentimentLora;

/// <summary>
/// Baseline: the frozen MiniLM encoder as a feature extractor (mean pooling over real tokens, L2 normalisation: the
/// sentence-transformers embedding) and ML.NET's LbfgsLogisticRegression on top, on the same split.
/// </summary>
internal static class LinearProbe
{
    private const int Dimensions = 384;

    public static (double Accuracy, double Auc) Run(MLContext ml, DataOperationsCatalog.TrainTestData split)
    {
        using var encoder = PretrainedModel.MiniLmL6V2.Load();
        var train = ml.Data.LoadFromEnumerable(Embed(encoder, ml.Data.CreateEnumerable<SentimentRow>(split.TrainSet, false).ToList()));
        var test = ml.Data.LoadFromEnumerable(Embed(encoder, ml.Data.CreateEnumerable<SentimentRow>(split.TestSet, false).ToList()));
        // One thread: L-BFGS's multi-threaded gradient sums are not reproducible run to run.
        var model = ml.BinaryClassification.Trainers.LbfgsLogisticRegression(
            new Microsoft.ML.Trainers.LbfgsLogisticRegressionBinaryTrainer.Options { NumberOfThreads = 1 }).Fit(train);
        var metrics = ml.BinaryClassification.Evaluate(model.Transform(test));
        return (metrics.Accuracy, metrics.AreaUnderRocCurve);
    }

    private static List<EmbeddedRow> Embed(LoadedPretrainedModel encoder, List<SentimentRow> rows)
    {
        var result = new List<EmbeddedRow>(rows.Count);
        foreach (var chunk in rows.Chunk(64))
        {
            using var scope = torch.NewDisposeScope();
            using var noGrad = torch.no_grad();
            var batch = encoder.Tokenizer.Encode(chunk.Select(r => r.Text).ToArray(), null, 128);
            var (ids, mask, types) = batch.ToTensors();
            var hidden = encoder.Model.call(ids, mask, types);
            var pooled = Pooling.Pool(hidden, mask, PoolingMode.Mean, normalize: true).contiguous();
            var values = pooled.data<float>().ToArray();
            for (int i = 0; i < chunk.Length; i++)
            {
                result.Add(new EmbeddedRow { Features = values.AsSpan(i * Dimensions, Dimensions).ToArray(), Label = chunk[i].Label == "1" });
            }
        }

        return result;
    }

    private sealed class EmbeddedRow
    {
        [VectorType(Dimensions)]
        public float[] Features { get; set; } = [];

        public bool Label { get; set; }
    }
}
