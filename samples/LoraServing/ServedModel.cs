using Microsoft.Extensions.ObjectPool;
using Microsoft.ML;
using Microsoft.ML.Data;

namespace LoraServing;

/// <summary>
/// One model and a pool of its prediction engines. A <c>PredictionEngine</c> is not thread-safe, so each request borrows
/// one; engines of one LoRA model share its native weights, and LoRA models share their base.
/// </summary>
public sealed class ServedModel : IDisposable
{
    private readonly ITransformer transformer;
    private readonly DefaultObjectPool<PredictionEngine<TextInput, TextPrediction>> engines;
    private readonly List<PredictionEngine<TextInput, TextPrediction>> created = [];
    private readonly Lock gate = new();

    /// <summary>Wraps <paramref name="transformer"/>; checks that it produces a class-probability Score and a text PredictedLabel.</summary>
    /// <exception cref="ArgumentException">The model's output columns are not those of a multiclass text classifier.</exception>
    public ServedModel(string name, string path, MLContext ml, ITransformer transformer, DataViewSchema inputSchema)
    {
        Name = name;
        Path = path;
        Kind = path.EndsWith(".onnx", StringComparison.OrdinalIgnoreCase) ? "onnx" : "torchsharp";
        this.transformer = transformer;
        var output = transformer.GetOutputSchema(inputSchema);
        if (output.GetColumnOrNull("Score")?.Type is not VectorDataViewType { ItemType: NumberDataViewType } ||
            output.GetColumnOrNull("PredictedLabel")?.Type is not TextDataViewType)
        {
            throw new ArgumentException(
                $"Model '{path}' must output Score (a vector of class probabilities) and PredictedLabel (text, after MapKeyToValue) " +
                "as a multiclass text classifier does; this one outputs [" + string.Join(", ", output.Select(c => $"{c.Name}: {c.Type}")) + "].",
                nameof(transformer));
        }

        engines = new DefaultObjectPool<PredictionEngine<TextInput, TextPrediction>>(new EnginePolicy(this, ml), Environment.ProcessorCount * 2);
    }

    /// <summary>The name requests use.</summary>
    public string Name { get; }

    /// <summary>The file it was loaded from.</summary>
    public string Path { get; }

    /// <summary>"torchsharp" (a LoRA model zip) or "onnx" (an exported model scored by ONNX Runtime).</summary>
    public string Kind { get; }

    /// <summary>Predicts one text with a pooled engine.</summary>
    public TextPrediction Predict(string text)
    {
        var engine = engines.Get();
        try
        {
            return engine.Predict(new TextInput { Text = text });
        }
        finally
        {
            engines.Return(engine);
        }
    }

    /// <summary>Scores many texts with one batched <c>Transform</c> (the reference the load test compares answers with).</summary>
    public float[][] ScoreBatch(MLContext ml, IReadOnlyList<string> texts)
    {
        var view = ml.Data.LoadFromEnumerable(texts.Select(t => new TextInput { Text = t }));
        return transformer.Transform(view).GetColumn<float[]>("Score").ToArray();
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        lock (gate)
        {
            foreach (var engine in created)
            {
                engine.Dispose();
            }

            created.Clear();
        }

        (transformer as IDisposable)?.Dispose();
    }

    private sealed class EnginePolicy(ServedModel owner, MLContext ml) : IPooledObjectPolicy<PredictionEngine<TextInput, TextPrediction>>
    {
        public PredictionEngine<TextInput, TextPrediction> Create()
        {
            var engine = ml.Model.CreatePredictionEngine<TextInput, TextPrediction>(owner.transformer);
            lock (owner.gate)
            {
                owner.created.Add(engine);
            }

            return engine;
        }

        public bool Return(PredictionEngine<TextInput, TextPrediction> obj) => true;
    }
}
