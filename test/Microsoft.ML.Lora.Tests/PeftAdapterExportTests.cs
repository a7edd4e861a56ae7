using System.Text.Json;
using Microsoft.ML.Lora.Models;

namespace Microsoft.ML.Lora.Tests;

[TestClass]
public sealed class PeftAdapterExportTests
{
    private static string root = string.Empty;
    private static PretrainedModel baseModel = null!;

    [ClassInitialize]
    public static void Initialize(TestContext _)
    {
        root = TinyBert.TempDirectory();
        baseModel = TinyBert.Create(Path.Combine(root, "base"), seed: 9);
    }

    [ClassCleanup]
    public static void Cleanup()
    {
        TinyBert.DeleteTempDirectory(root);
    }

    private static (MLContext ml, IDataView data) BinaryData()
    {
        var ml = new MLContext(seed: 4);
        return (ml, ml.Data.LoadFromEnumerable(TinyBert.Sentences(48, 2, 6).Select(s => new BinaryRow { Text = s.Text, Label = s.Class == 0 })));
    }

    private static float[] Scores(MLContext ml, LoraTransformer model, IDataView data) =>
        ml.Data.CreateEnumerable<BinaryPrediction>(model.Transform(data), reuseRowObject: false).Select(p => p.Score).ToArray();

    [TestMethod]
    public void SavePeftAdapter_ThenInitialPeftAdapterWithZeroEpochs_GivesSamePredictions()
    {
        var (ml, data) = BinaryData();
        var options = LoraFineTuningTests.FastOptions(baseModel);
        options.MaxEpochs = 3;
        options.Rank = 2;
        options.Alpha = 6;
        using var trained = ml.Transforms.LoraFineTune(options).Fit(data);
        string adapterDir = trained.SavePeftAdapter(Path.Combine(root, "exported"));

        using (var config = JsonDocument.Parse(File.ReadAllText(Path.Combine(adapterDir, "adapter_config.json"))))
        {
            Assert.AreEqual("LORA", config.RootElement.GetProperty("peft_type").GetString());
            Assert.AreEqual(2, config.RootElement.GetProperty("r").GetInt32());
            var modulesToSave = config.RootElement.GetProperty("modules_to_save").EnumerateArray().Select(e => e.GetString()).ToList();
            Assert.AreEqual("classifier", modulesToSave.Single(), "the head travels with the adapter, as PEFT's modules_to_save");
        }

        // A different rank/alpha/targets in the options: the adapter's own settings must win.
        var restartOptions = LoraFineTuningTests.FastOptions(baseModel);
        restartOptions.Rank = 8;
        restartOptions.Alpha = 1;
        restartOptions.TargetModules = ["query"];
        restartOptions.InitialPeftAdapter = adapterDir;
        restartOptions.MaxEpochs = 0;
        using var restored = ml.Transforms.LoraFineTune(restartOptions).Fit(data);

        float[] expected = Scores(ml, trained, data), actual = Scores(ml, restored, data);
        Assert.AreEqual(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
        {
            // Both run merged weights built from the same factors on the same base: equal up to float rounding.
            Assert.AreEqual(expected[i], actual[i], 1e-5, $"row {i}");
        }
        Assert.AreEqual(trained.TrainableParameterCount, restored.TrainableParameterCount);
    }

    [TestMethod]
    public void InitialPeftAdapter_ContinueTraining_StartsFromTheAdapter()
    {
        var (ml, data) = BinaryData();
        var options = LoraFineTuningTests.FastOptions(baseModel);
        options.MaxEpochs = 3;
        using var trained = ml.Transforms.LoraFineTune(options).Fit(data);
        string adapterDir = trained.SavePeftAdapter(Path.Combine(root, "continue"));
        double trainedLoss = LogLoss(ml, trained, data);

        var more = LoraFineTuningTests.FastOptions(baseModel);
        more.InitialPeftAdapter = adapterDir;
        more.MaxEpochs = 2;
        more.LearningRate = 1e-3;
        using var continued = ml.Transforms.LoraFineTune(more).Fit(data);

        // Two more low-rate epochs from the trained adapter keep (or improve) its fit; from scratch they would not reach it.
        double continuedLoss = LogLoss(ml, continued, data);
        var scratch = LoraFineTuningTests.FastOptions(baseModel);
        scratch.MaxEpochs = 2;
        scratch.LearningRate = 1e-3;
        using var fromScratch = ml.Transforms.LoraFineTune(scratch).Fit(data);
        double scratchLoss = LogLoss(ml, fromScratch, data);
        Assert.IsLessThan(scratchLoss, continuedLoss, $"continued {continuedLoss}, from scratch {scratchLoss}, adapter {trainedLoss}");
    }

    [TestMethod]
    public void InitialPeftAdapter_MissingDirectory_NamesTheOptionAndPath()
    {
        var (ml, data) = BinaryData();
        var options = LoraFineTuningTests.FastOptions(baseModel);
        options.InitialPeftAdapter = Path.Combine(root, "no-such-adapter");
        var error = Assert.ThrowsExactly<ArgumentException>(() => ml.Transforms.LoraFineTune(options).Fit(data));
        Assert.AreEqual(nameof(LoraFineTuningOptions.InitialPeftAdapter), error.ParamName);
        StringAssert.Contains(error.Message, "no-such-adapter");
    }

    /// <summary>Mean binary cross-entropy of the model's probabilities on the data.</summary>
    private static double LogLoss(MLContext ml, LoraTransformer model, IDataView data) =>
        ml.Data.CreateEnumerable<BinaryPrediction>(model.Transform(data), false)
            .Zip(ml.Data.CreateEnumerable<BinaryRow>(data, false))
            .Average(p => -Math.Log(Math.Clamp(p.Second.Label ? p.First.Probability : 1 - p.First.Probability, 1e-7, 1)));
}
