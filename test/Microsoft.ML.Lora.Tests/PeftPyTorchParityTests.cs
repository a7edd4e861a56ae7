using System.Globalization;
using Microsoft.ML.Data;
using Microsoft.ML.Lora.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests;

/// <summary>
/// Adapters cross into Python and back with the same predictions: test/pytorch/bert_peft_reference.py is an independent
/// PyTorch implementation of Hugging Face's BertForSequenceClassification + PEFT LoRA (float64) that reads the base
/// (config.json + model.safetensors) and a PEFT folder. Token ids come from our tokenizer (tokenization is not under test).
/// </summary>
[TestClass]
[PyTorchCondition]
public sealed class PeftPyTorchParityTests
{
    private const string Script = "test/pytorch/bert_peft_reference.py";
    private static string root = string.Empty;
    private static PretrainedModel baseModel = null!;

    [ClassInitialize]
    public static void Initialize(TestContext _)
    {
        root = TinyBert.TempDirectory();
        baseModel = TinyBert.Create(Path.Combine(root, "base"), seed: 29, pooler: true);
    }

    [ClassCleanup]
    public static void Cleanup()
    {
        TinyBert.DeleteTempDirectory(root);
    }

    private static List<(string Text, int Class)> Rows(int classes) => TinyBert.Sentences(48, classes, 31);

    private static IEstimator<ITransformer> Pipeline(MLContext ml, string task, int epochs, string? initialAdapter = null)
    {
        var options = TinyBert.FastOptions(baseModel);
        options.Pooling = PoolingMode.Cls;   // Hugging Face's head: the pooler on [CLS]
        options.MaxEpochs = epochs;
        options.InitialPeftAdapter = initialAdapter;
        if (initialAdapter is not null)
        {
            options.TargetModules = ["query", "value"];
        }

        return task == "multiclass"
            ? ml.Transforms.Conversion.MapValueToKey("Label").Append(ml.Transforms.LoraFineTune(options))
            : ml.Transforms.LoraFineTune(options);
    }

    private static IDataView Data(MLContext ml, string task) => task switch
    {
        "binary" => ml.Data.LoadFromEnumerable(Rows(2).Select(r => new BinaryRow { Text = r.Text, Label = r.Class == 1 })),
        "regression" => ml.Data.LoadFromEnumerable(Rows(3).Select(r => new RegressionRow { Text = r.Text, Label = 2.5f + (1.5f * r.Class) })),
        _ => ml.Data.LoadFromEnumerable(Rows(3).Select(r => new TextRow { Text = r.Text, Label = "c" + r.Class.ToString(CultureInfo.InvariantCulture) })),
    };

    /// <summary>Transform's scores flattened: binary the logit (Score), multiclass the probabilities, regression the value.</summary>
    private static float[] Scores(MLContext ml, ITransformer model, IDataView data, string task)
    {
        var scored = model.Transform(data);
        return task == "multiclass"
            ? scored.GetColumn<float[]>("Score").SelectMany(s => s).ToArray()
            : scored.GetColumn<float>("Score").ToArray();
    }

    /// <summary>Writes the token ids of the rows (and labels/metadata for training) as safetensors.</summary>
    private static string WriteInputs(string dir, string task, Dictionary<string, string>? metadata = null)
    {
        var model = BertTextTokenizer.FromVocabFile(Path.Combine(root, "base", "vocab.txt"));
        var rows = Rows(task == "binary" ? 2 : 3);
        var batch = model.Encode(rows.Select(r => r.Text).ToList(), null, 16);
        var (ids, mask, types) = batch.ToTensors(CPU);
        var tensors = new Dictionary<string, Tensor> { ["input_ids"] = ids, ["attention_mask"] = mask, ["token_type_ids"] = types };
        if (metadata is not null)
        {
            tensors["labels"] = tensor(rows.Select(r => task == "regression" ? 2.5f + (1.5f * r.Class) : task == "binary" ? (r.Class == 1 ? 1f : 0f) : r.Class).ToArray());
        }

        string path = Path.Combine(dir, "inputs.safetensors");
        SafeTensors.Write(path, tensors, metadata);
        return path;
    }

    private static float[] RunReference(string command, string adapter, string inputs, string? baseDirectory = null, string precision = "float64")
    {
        string output = Path.Combine(Path.GetDirectoryName(inputs)!, "scores.safetensors");
        var (exit, stdout, stderr) = PyTorchReference.Run(PyTorchReference.FindInRepository(Script),
            [command, baseDirectory ?? Path.Combine(root, "base"), adapter, inputs, output, precision], TimeSpan.FromMinutes(5));
        Assert.AreEqual(0, exit, $"{Script} {command} failed:\n{stdout}\n{stderr}");
        var (tensors, _) = SafeTensors.Read(output);
        return tensors["scores"].contiguous().data<float>().ToArray();
    }

    private static void AssertClose(float[] expected, float[] actual, string what)
    {
        Assert.HasCount(expected.Length, actual, what);
        double worst = expected.Zip(actual).Max(p => Math.Abs(p.First - p.Second));
        // float32 (ours) against float64 (reference) on the same weights: 1e-4 absolute, as the issue asks.
        Console.WriteLine($"{what}: max |difference| {worst:G3}");
        Assert.IsLessThan(1e-4, worst, $"{what}: max |difference| {worst}");
    }

    [TestMethod]
    [DataRow("binary")]
    [DataRow("multiclass")]
    [DataRow("regression")]
    public void SavePeftAdapter_ClsPooling_PyTorchReferenceScoresAsTransform(string task)
    {
        var ml = new MLContext(seed: 3);
        var data = Data(ml, task);
        var model = Pipeline(ml, task, epochs: 4).Fit(data);
        try
        {
            var lora = model as LoraTransformer ?? ((IEnumerable<ITransformer>)model).OfType<LoraTransformer>().Single();
            string dir = Path.Combine(root, "export-" + task);
            lora.SavePeftAdapter(dir);
            float[] ours = Scores(ml, model, data, task);

            float[] reference = RunReference("score", dir, WriteInputs(dir, task));

            AssertClose(ours, reference, task);
            string head = File.ReadAllText(Path.Combine(dir, "head_config.json"));
            StringAssert.Contains(head, "\"huggingface_compatible\": true");
            StringAssert.Contains(head, task == "regression" ? "\"problem_type\": \"regression\"" : "\"problem_type\": \"single_label_classification\"");
            StringAssert.Contains(File.ReadAllText(Path.Combine(dir, "adapter_config.json")), "\"task_type\": \"SEQ_CLS\"");
        }
        finally
        {
            (model as IDisposable)?.Dispose();
        }
    }

    [TestMethod]
    [DataRow("binary")]
    [DataRow("multiclass")]
    [DataRow("regression")]
    public void InitialPeftAdapter_TrainedByPyTorchReference_ScoresAsTheReference(string task)
    {
        string dir = Path.Combine(root, "python-" + task);
        Directory.CreateDirectory(dir);
        var metadata = new Dictionary<string, string>
        {
            ["task"] = task,
            ["num_labels"] = task switch { "binary" => "2", "regression" => "1", _ => "3" },
            ["steps"] = "8",
            ["seed"] = "5",
        };
        string adapter = Path.Combine(dir, "adapter");
        float[] reference = RunReference("train", adapter, WriteInputs(dir, task, metadata));

        var ml = new MLContext(seed: 3);
        var data = Data(ml, task);
        var model = Pipeline(ml, task, epochs: 0, initialAdapter: adapter).Fit(data);
        try
        {
            AssertClose(reference, Scores(ml, model, data, task), task);
        }
        finally
        {
            (model as IDisposable)?.Dispose();
        }
    }

    /// <summary>
    /// The bar on the real encoder: all-MiniLM-L6-v2 (which has a pooler) fine-tuned briefly with Hugging Face's head
    /// (CLS + pooler, one logit per class), exported as PEFT and scored by the reference on the sample's held-out split
    /// (seeded 80/20, 603 sentences). Agreement, not quality, is under test: 128 sentences, 2 epochs.
    /// </summary>
    [TestMethod]
    public void SavePeftAdapter_MiniLmSentimentTestSplit_PyTorchReferenceScoresAsTransform()
    {
        var ml = new MLContext(seed: 42);
        var sentiment = SentimentSplit.Load(ml);
        using var model = sentiment.FitBriefly(ml, PoolingMode.Cls);
        string dir = Path.Combine(root, "minilm");
        string baseDirectory = Path.Combine(dir, "base");
        model.Model.Model.Bert.SaveHuggingFace(baseDirectory);   // the reference reads safetensors
        model.SavePeftAdapter(Path.Combine(dir, "adapter"));
        var test = sentiment.Test;
        var texts = test.GetColumn<string>("Text").ToList();
        Assert.HasCount(603, texts);
        float[] ours = model.Transform(test).GetColumn<VBuffer<float>>("Score").SelectMany(v => v.DenseValues()).ToArray();

        // The same word pieces Transform keeps (the model's truncation: HeadTail by default, recorded in head_config.json).
        var (ids, mask, types) = model.Model.Tokenizer.Encode(texts, null, model.Model.Settings.MaxSequenceLength, model.Model.Settings.Truncation).ToTensors(CPU);
        string inputs = Path.Combine(dir, "inputs.safetensors");
        SafeTensors.Write(inputs, new Dictionary<string, Tensor> { ["input_ids"] = ids, ["attention_mask"] = mask, ["token_type_ids"] = types }, null);
        // float32 in the reference too: 603 rows of MiniLM in float64 take minutes on 2 cores.
        float[] reference = RunReference("score", Path.Combine(dir, "adapter"), inputs, baseDirectory, "float32");

        AssertClose(ours, reference, "MiniLM sentiment test split");
        string headConfig = File.ReadAllText(Path.Combine(dir, "adapter", "head_config.json"));
        Assert.IsTrue(headConfig.Contains("\"huggingface_compatible\": true", StringComparison.Ordinal));
        Assert.IsTrue(headConfig.Contains("\"truncation\": \"head_tail\"", StringComparison.Ordinal), headConfig);
    }

    [TestMethod]
    public void SavePeftAdapter_MeanPooling_SaysItIsNotHuggingFacesHead()
    {
        var ml = new MLContext(seed: 3);
        var options = TinyBert.FastOptions(baseModel);
        options.MaxEpochs = 1;
        using var lora = ml.Transforms.LoraFineTune(options).Fit(Data(ml, "binary"));
        string dir = Path.Combine(root, "export-mean");
        lora.SavePeftAdapter(dir);
        string head = File.ReadAllText(Path.Combine(dir, "head_config.json"));
        StringAssert.Contains(head, "\"huggingface_compatible\": false");
        StringAssert.Contains(head, "\"pooling\": \"mean\"");
    }
}
