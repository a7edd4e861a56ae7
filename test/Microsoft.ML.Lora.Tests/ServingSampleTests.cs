using System.Globalization;
using System.Net;
using System.Net.Http.Json;
using LoraServing;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.DependencyInjection;

namespace Microsoft.ML.Lora.Tests;

/// <summary>
/// The short CI form of samples/LoraServing's load test: three LoRA models on one tiny base served over loopback HTTP,
/// every answer equal to the model's batched Transform, and clear answers for bad requests.
/// </summary>
[TestClass]
public sealed class ServingSampleTests
{
    private static string root = string.Empty;
    private static ModelCatalog catalog = null!;
    private static WebApplication app = null!;
    private static Uri address = null!;
    private static int basesAdded;
    private static readonly MLContext Ml = new(seed: 1);

    [ClassInitialize]
    public static async Task Initialize(TestContext _)
    {
        root = TinyBert.TempDirectory();
        var baseModel = TinyBert.Create(Path.Combine(root, "base"), seed: 37);
        string models = Path.Combine(root, "models");
        Directory.CreateDirectory(models);
        for (int m = 0; m < 3; m++)
        {
            var ml = new MLContext(seed: m);
            var data = ml.Data.LoadFromEnumerable(TinyBert.Sentences(48, 3, 40 + m)
                .Select(s => new TextRow { Text = s.Text, Label = "c" + s.Class.ToString(CultureInfo.InvariantCulture) }));
            var options = TinyBert.FastOptions(baseModel);
            options.MaxEpochs = 3;
            var keyed = ml.Transforms.Conversion.MapValueToKey("Label").Fit(data).Transform(data);
            using var model = ml.Transforms.LoraFineTune(options)
                .Append(ml.Transforms.Conversion.MapKeyToValue("PredictedLabel"))
                .Fit(keyed);
            ml.Model.Save(model, keyed.Schema, Path.Combine(models, $"model{m}.zip"));
            if (m == 0)
            {
                model.OfType<LoraTransformer>().Single().ExportOnnx(Path.Combine(models, "model0-onnx.onnx"));
            }
        }

        int basesBefore = LoraBaseModels.LoadedCount;
        catalog = ModelCatalog.Load(Ml, [models], DemoModels.OnnxLoader(Ml));
        basesAdded = LoraBaseModels.LoadedCount - basesBefore;
        app = ServingApp.Build(catalog, "http://127.0.0.1:0");
        await app.StartAsync();
        address = new Uri(app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First() + "/");
    }

    [ClassCleanup]
    public static async Task Cleanup()
    {
        if (app is not null)
        {
            await app.StopAsync();
            await app.DisposeAsync();
        }

        catalog?.Dispose();
        TinyBert.DeleteTempDirectory(root);
    }

    [TestMethod]
    public async Task LoadTest_ThreeModelsOnOneBaseAndAnOnnxExport_EveryAnswerEqualsTransform()
    {
        Assert.HasCount(4, catalog.Models);
        Assert.AreEqual(1, basesAdded, "the three LoRA models loaded one base");
        Assert.AreEqual("onnx", catalog.Models["model0-onnx"].Kind);
        var texts = TinyBert.Sentences(30, 3, 99).Select(s => s.Text).ToList();
        var work = new List<LoadTest.Work>();
        foreach (var model in catalog.Models.Values)
        {
            var expected = model.ScoreBatch(Ml, texts);
            work.AddRange(texts.Select((t, i) => new LoadTest.Work(model.Name, t, expected[i])));
        }

        // The LoRA models differ (different adapters and heads), so a mix-up between models would show; the ONNX export of
        // model0 scores as model0.
        var byModel = work.GroupBy(w => w.Model).ToDictionary(g => g.Key, g => g.Select(w => w.Expected).ToList());
        for (int i = 0; i < texts.Count; i++)
        {
            CollectionAssert.AreEqual(byModel["model0"][i], byModel["model0-onnx"][i], new Tolerance(1e-4), $"text {i}: ONNX export vs LoRA model");
        }

        Assert.IsTrue(byModel["model0"].Zip(byModel["model1"]).Any(p => Math.Abs(p.First[0] - p.Second[0]) > 1e-3), "the models differ");

        var result = await LoadTest.RunAsync(address, "ci", work, clients: 4, requests: 120, TimeSpan.FromMinutes(2));

        Assert.AreEqual(120, result.Requests, "all requests answered within the bound");
        Assert.AreEqual(0, result.Failures);
        // A single-row engine pads nothing; Transform pads to the batch's longest row: float32 rounding only.
        Assert.AreEqual(0, result.Mismatches, $"max |Δscore| {result.MaxDifference}");
    }

    [TestMethod]
    public async Task Predict_UnknownModelOrNoText_NotFoundAndBadRequestWithReason()
    {
        using var http = new HttpClient { BaseAddress = address };
        using var unknown = await http.PostAsJsonAsync("models/nope/predict", new ServingApp.PredictRequest("good"));
        Assert.AreEqual(HttpStatusCode.NotFound, unknown.StatusCode);
        StringAssert.Contains(await unknown.Content.ReadAsStringAsync(), "model0");
        using var noText = await http.PostAsJsonAsync("models/model0/predict", new ServingApp.PredictRequest(null));
        Assert.AreEqual(HttpStatusCode.BadRequest, noText.StatusCode);
        var models = await http.GetStringAsync("models");
        StringAssert.Contains(models, "torchsharp");
        StringAssert.Contains(models, "onnx");
    }

    private sealed class Tolerance(double allowed) : System.Collections.IComparer
    {
        public int Compare(object? x, object? y) => Math.Abs(Convert.ToDouble(x, CultureInfo.InvariantCulture) - Convert.ToDouble(y, CultureInfo.InvariantCulture)) <= allowed ? 0 : 1;
    }

    [TestMethod]
    public void ModelCatalog_ModelOfAnotherTask_ThrowsNamingFileAndColumns()
    {
        string dir = Path.Combine(root, "binary");
        Directory.CreateDirectory(dir);
        var ml = new MLContext(seed: 3);
        var data = ml.Data.LoadFromEnumerable(TinyBert.Sentences(16, 2, 5).Select(s => new BinaryRow { Text = s.Text, Label = s.Class == 0 }));
        var options = TinyBert.FastOptions(TinyBert.Create(Path.Combine(root, "base2"), seed: 38));
        options.MaxEpochs = 1;
        using (var model = ml.Transforms.LoraFineTune(options).Fit(data))
        {
            ml.Model.Save(model, data.Schema, Path.Combine(dir, "binary.zip"));
        }

        var error = Assert.Throws<ArgumentException>(() => ModelCatalog.Load(ml, [dir]));
        StringAssert.Contains(error.Message, "binary.zip");
        StringAssert.Contains(error.Message, "Score");
    }
}
