using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Lora;

namespace LoraServing;

/// <summary>The demo's models: one sentiment adapter per review source of the UCI sentences, on the embedded MiniLM.</summary>
public static class DemoModels
{
    /// <summary>The sources, in file order (1000 sentences each).</summary>
    public static readonly string[] Sources = ["amazon", "imdb", "yelp"];

    /// <summary>A labelled sentence of the data file.</summary>
    public sealed class Row
    {
        /// <summary>The sentence.</summary>
        public string Text { get; set; } = string.Empty;

        /// <summary>"1" positive, "0" negative.</summary>
        public string Label { get; set; } = string.Empty;
    }

    /// <summary>The sentences of one source (1000, in file order).</summary>
    public static List<Row> Read(string dataPath, string source)
    {
        int index = Array.IndexOf(Sources, source);
        if (index < 0)
        {
            throw new ArgumentException($"Unknown source '{source}'; expected one of {string.Join(", ", Sources)}.", nameof(source));
        }

        return File.ReadLines(dataPath).Skip(1 + (1000 * index)).Take(1000)
            .Select(line => line.Split('\t')).Select(p => new Row { Text = p[0], Label = p[1] }).ToList();
    }

    /// <summary>Trains one adapter per source on its first 240 sentences (2 epochs) and saves <c>&lt;source&gt;.zip</c>.</summary>
    public static void Train(MLContext ml, string dataPath, string directory, int rows = 240, int epochs = 2)
    {
        Directory.CreateDirectory(directory);
        foreach (string source in Sources)
        {
            // The label is mapped to a key outside the saved chain, so that the served model needs only the Text column.
            var data = ml.Data.LoadFromEnumerable(Read(dataPath, source).Take(rows));
            var keyed = ml.Transforms.Conversion.MapValueToKey("Label").Fit(data).Transform(data);
            var pipeline = ml.Transforms.LoraFineTune(new LoraFineTuningOptions { MaxEpochs = epochs, BatchSize = 16, MaxSequenceLength = 64 })
                .Append(ml.Transforms.Conversion.MapKeyToValue("PredictedLabel"));
            using var model = pipeline.Fit(keyed);
            ml.Model.Save(model, keyed.Schema, Path.Combine(directory, source + ".zip"));
            Console.WriteLine($"  {source}: trained on {rows} sentences, saved {source}.zip");
            if (source == Sources[^1])
            {
                // One model also exported for scoring without libtorch (ONNX Runtime): served beside the others.
                model.OfType<LoraTransformer>().Single().ExportOnnx(Path.Combine(directory, source + "-onnx.onnx"));
                Console.WriteLine($"  {source}: exported {source}-onnx.onnx");
            }
        }
    }

    /// <summary>
    /// How the catalog loads an exported .onnx model: <c>ScoreLoraOnnx</c> (ONNX Runtime, no libtorch) followed by
    /// MapKeyToValue, so it answers with the same columns as the LoRA model zips.
    /// </summary>
    public static Func<string, ITransformer> OnnxLoader(MLContext ml) => path =>
    {
        var onnx = ml.Transforms.ScoreLoraOnnx(path);
        var empty = ml.Data.LoadFromEnumerable(Array.Empty<TextInput>());
        var toValue = ml.Transforms.Conversion.MapKeyToValue("PredictedLabel").Fit(onnx.Transform(empty));
        return new TransformerChain<ITransformer>(onnx, toValue);
    };
}
